//! SQL sessions with skyscore's functions: [`session`] builds a DataFusion session with the
//! UDFs, tables and Parquet metadata; [`output`] runs statements and writes results atomically,
//! `COPY` to local paths through [`copy`].

pub mod copy;
pub mod output;
pub mod session;
