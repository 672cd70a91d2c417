//! The encoder's model description: config and tensor names.

pub mod config;
pub mod weights;
