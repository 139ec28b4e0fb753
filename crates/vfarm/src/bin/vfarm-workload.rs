//! `vfarm-workload`: the benchmark workloads `vfarm bench overhead` copies into instances and
//! VMs (see `vfarm_workload`). Prints one JSON line per run.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match vfarm_workload::run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vfarm-workload: error [{}]: {e}", e.code());
            ExitCode::from(e.exit_status() as u8)
        }
    }
}
