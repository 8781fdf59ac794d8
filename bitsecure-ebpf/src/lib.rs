// This file exists so `bitsecure` can build-depend on this crate (see bitsecure/build.rs);
// the programs themselves are in main.rs.
#![no_std]
