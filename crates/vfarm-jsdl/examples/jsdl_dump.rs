//! Parses a JSDL file and prints the warnings, the rewritten XML and the job request.
//! Usage: `cargo run -p vfarm-jsdl --example jsdl_dump -- FILE`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: jsdl_dump FILE");
        std::process::exit(2);
    };
    let xml = match std::fs::read_to_string(&path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    match vfarm_jsdl::parse(&xml) {
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
        Ok(parsed) => {
            for w in &parsed.warnings {
                println!("warning: {w}");
            }
            print!("{}", vfarm_jsdl::write(&parsed.value));
            match parsed.value.to_job_request() {
                Ok(req) => println!(
                    "{}",
                    serde_json::to_string_pretty(&req).expect("request serialises")
                ),
                Err(e) => println!("not runnable: {e}"),
            }
        }
    }
}
