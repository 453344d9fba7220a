//! The KB 954960 repair as a workflow: the steps run on each WSUS server ([`kb954960`]), the
//! reviewable plan built from them ([`plan`]), SUSDB access with tiberius ([`db`], the one module
//! that sends SQL; [`connect`]), the engine workflow ([`repair`]) and the read-only survey of
//! many servers at once ([`survey`]) behind `plan --online` and `verify`.

pub mod api;
pub mod applock;
pub mod connect;
pub mod db;
pub mod discover;
pub mod export;
pub mod kb954960;
pub mod plan;
pub mod reach;
pub mod repair;
pub mod survey;

pub use kb954960::{Step, steps_for};
pub use plan::{PLAN_VERSION, Plan, PlannedServer};
pub use repair::{Repair, Verdict};
