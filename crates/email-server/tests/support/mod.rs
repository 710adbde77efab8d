//! Helpers shared by the integration tests: servers to talk to and
//! certificates to trust.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub(crate) mod aiosmtpd;
pub(crate) mod certs;
pub(crate) mod fault_smtp;
