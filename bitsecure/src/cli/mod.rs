//! The command line's own work, apart from running the agent: the review commands
//! ([`commands`]) talking to a running agent through [`client`], and `bitsecure check`
//! ([`check`]), which diagnoses a host without running anything, and the Prometheus rules
//! for this agent ([`rules`]), and `bitsecure top`, the live view in a terminal ([`top`]).
//! Nothing here attaches programs or reads kernel maps: the commands talk to the agent over
//! HTTP and read or edit files.

pub mod check;
pub mod client;
pub mod commands;
pub mod rules;
pub mod top;
