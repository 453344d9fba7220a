//! The generic runtime that walks a topology top-down and runs a workflow on each server:
//! dependency-driven scheduling with bounded concurrency, retries, the write-ahead journal, the
//! state-dir lock, resume and the typed event stream. It knows workflows only through a trait and
//! never names tiberius or WSUS.
//!
//! Empty until the engine work lands: the offline commands (`validate`, `graph`, `plan`) need
//! only the `topology` and `workflows` crates.
