//! Renderings of a plan and of an apply report. Each is a view of `crate::plan` types.

pub mod human;
pub mod markdown;
