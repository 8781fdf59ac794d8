//! The command line's own work, apart from running the agent: the review commands
//! ([`commands`]) talking to a running agent through [`client`], and `bitsecure check`
//! ([`check`]), which diagnoses a host without running anything.

pub mod check;
pub mod client;
pub mod commands;
