//! The KB 954960 repair as a workflow: the steps run on each WSUS server ([`kb954960`]) and the
//! reviewable plan built from them ([`plan`]).
//!
//! SUSDB access (tiberius) and the engine integration join this crate with the SUSDB-workflow work;
//! until then the crate is offline-only and does no I/O.

pub mod kb954960;
pub mod plan;

pub use kb954960::{Step, steps_for};
pub use plan::{PLAN_VERSION, Plan, PlannedServer};
