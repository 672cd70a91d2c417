//! The encoder's model description: config and tensor names.

pub mod adapters;
pub mod config;
pub mod embedding_layout;
pub mod encoder;
pub mod fusion;
pub mod load;
pub mod plan;
pub mod source;
pub mod store;
pub mod weights;
