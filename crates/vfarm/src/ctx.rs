//! What every command needs: the environment (data dir, store, repository) and how to print.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
pub use vfarm_service::env::{database, default_data_dir, Env};

/// `--output`: a table for people, one JSON document for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A command's context: the operations' [`Env`] (reached through `Deref`) and the output
/// format.
pub struct Ctx {
    pub env: Env,
    pub output: OutputFormat,
    pub verbose: u8,
}

impl std::ops::Deref for Ctx {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Ctx {
    pub fn new(data_dir: PathBuf, output: OutputFormat, verbose: u8) -> Ctx {
        Ctx {
            env: Env::new(data_dir),
            output,
            verbose,
        }
    }

    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Print `value` as the command's one JSON document.
    pub fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}
