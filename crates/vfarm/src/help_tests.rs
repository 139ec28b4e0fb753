//! Every argument of every command is described, and the global options stand in their own
//! help section, so `--help` and the man pages never show a bare flag.

use crate::{command, GLOBAL};

/// `path` for every command in the tree, with the command itself.
fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        walk(sub, format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_argument_and_command_is_described() {
    let mut all = Vec::new();
    walk(&command(), "vfarm".into(), &mut all);
    assert!(all.len() > 50, "only {} commands", all.len());
    let mut bare = Vec::new();
    for (path, cmd) in &all {
        if cmd.get_about().is_none() && path != "vfarm" {
            bare.push(format!("`{path}` (the command)"));
        }
        for a in cmd.get_arguments() {
            let builtin = matches!(a.get_id().as_str(), "help" | "version");
            if a.is_hide_set() || builtin {
                continue;
            }
            if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                bare.push(format!("`{path}` {}", a.get_id()));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "arguments without a description:\n{}",
        bare.join("\n")
    );
}

#[test]
fn global_options_have_their_own_heading_and_serve_leaves_out_the_client() {
    let cmd = command();
    let create = cmd
        .find_subcommand("instance")
        .and_then(|c| c.find_subcommand("create"))
        .unwrap();
    for id in ["data_dir", "output", "verbose", "server", "token_file"] {
        let a = create.get_arguments().find(|a| a.get_id() == id).unwrap();
        assert_eq!(a.get_help_heading(), Some(GLOBAL), "{id}");
    }
    let help = create.clone().render_help().to_string();
    let at = help.find(&format!("{GLOBAL}:")).expect("a global section");
    assert!(
        help[at..].contains("--data-dir") && !help[..at].contains("--data-dir"),
        "{help}"
    );
    let mut serve = cmd.find_subcommand("serve").unwrap().clone();
    let help = serve.render_help().to_string();
    for flag in ["--server ", "--token-file", "--cert "] {
        assert!(!help.contains(flag), "serve --help offers {flag}:\n{help}");
    }
}

#[test]
fn the_adjusted_command_still_parses() {
    let help = command().try_get_matches_from(["vfarm", "serve", "-h"]);
    assert_eq!(
        help.unwrap_err().kind(),
        clap::error::ErrorKind::DisplayHelp
    );
    let m = command()
        .try_get_matches_from(["vfarm", "serve", "--listen", "127.0.0.1:0", "-v"])
        .unwrap();
    assert_eq!(m.get_count("verbose"), 1);
}
