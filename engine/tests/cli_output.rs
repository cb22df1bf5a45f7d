//! What a new user meets first: every command's `--help` shows an example and the exit
//! statuses, and contradictory output options are refused before anything is read.

mod common;
use common::{conntrail, text};

/// The subcommands `conntrail help` lists (without `help` itself).
fn subcommands() -> Vec<String> {
    let out = conntrail(&["help"]);
    assert!(out.status.success(), "help failed: {}", text(&out.stderr));
    let help = text(&out.stdout);
    let list = help
        .split("Commands:\n")
        .nth(1)
        .expect("help lists its commands");
    let names: Vec<String> = list
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10, "too few subcommands in {help}");
    names
}

#[test]
fn every_subcommand_help_shows_its_exit_statuses() {
    for name in subcommands() {
        let out = conntrail(&[&name, "--help"]);
        assert!(out.status.success(), "{name} --help failed");
        let help = text(&out.stdout);
        assert!(help.contains("Exit status:"), "{name} --help: {help}");
        for status in [
            "0  done",
            "1  damage",
            "2  usage",
            "3  records",
            "4  records lost",
        ] {
            assert!(
                help.contains(status),
                "{name} --help lacks {status:?}: {help}"
            );
        }
    }
}

#[test]
fn every_subcommand_help_shows_an_example_of_itself() {
    for name in subcommands() {
        let out = conntrail(&[&name, "--help"]);
        let help = text(&out.stdout);
        let example = help
            .split("Example:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{name} --help has no example: {help}"));
        assert!(
            example
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("conntrail {name} "))),
            "{name} --help example does not run {name}: {help}"
        );
    }
}

#[test]
fn json_and_ecs_together_are_a_usage_error() {
    for cmd in ["show", "query"] {
        let out = conntrail(&[cmd, "--json", "--ecs", "some.log"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains("--json") && err.contains("--ecs") && err.contains("cannot be used"),
            "{cmd}: {err}"
        );
    }
}
