//! The command engine: the ControlCommand lifecycle and its driver.

pub mod lifecycle;
