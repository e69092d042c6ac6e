//! Tests of the Wasm policy host, with hand-written policy modules.

mod allocation;
mod cli;
mod guest;
mod hostile;
mod registry;
mod specs;
mod wat_guest;
