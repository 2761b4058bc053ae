//! opsplan: plan and apply the operational state of one application.
//!
//! The pipeline, in the order the folders read: [`config`] loads `ops.toml`, [`engine`]
//! compiles it into a [`graph`] of resources, each concern ([`schema`], [`mail`]) reads its live
//! state and diffs it into a [`plan`], [`render`] shows the plan, and [`apply`] carries it
//! out in dependency order.

pub mod alerts;
pub mod apply;
pub mod cli;
pub mod config;
pub mod diagnostic;
pub mod engine;
pub mod graph;
pub mod keyset;
pub mod lock;
pub mod mail;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod schema;
pub mod secret;
pub mod store;
