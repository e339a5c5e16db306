//! Everything the daemon fetches from the backend: the HTTPS client
//! ([`http`]), signed requests and capped metadata reads ([`backend`]), and
//! streaming, verified, resumable image downloads ([`download`]).

pub mod backend;
pub mod download;
pub mod http;
