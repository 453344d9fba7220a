//! The KB 954960 repair as a workflow: the steps run on each WSUS server ([`kb954960`]), the
//! reviewable plan built from them ([`plan`]), the port to a WSUS server with its two adapters,
//! SUSDB over TDS and the administration web service ([`reach`]), the engine workflow
//! ([`repair`]), the read-only survey of many servers at once ([`survey`]) behind `plan --online`
//! and `verify`, discovery of a hierarchy from its servers ([`discover`]), and whether each server
//! still needs the KB's hotfix ([`hotfix`]); text from servers made safe to show ([`text`]).

pub mod discover;
pub mod export;
pub mod hotfix;
pub mod kb954960;
pub mod plan;
pub mod reach;
pub mod repair;
pub mod scan;
pub mod survey;
pub mod text;

pub use kb954960::{Step, steps_for};
pub use plan::{PLAN_VERSION, Plan, PlannedServer};
pub use repair::{Repair, Verdict};
