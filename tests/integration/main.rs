//! End-to-end tests of the `wsus-reset` binary; all in one test binary (one link, one run).

mod client_scan;
mod contract;
mod diagnose;
mod discovery;
mod fidelity;
mod legacy_tls;
mod offline;
mod readme;
mod repair;
mod safety;
mod third_party;
mod tls;
mod web_service;
