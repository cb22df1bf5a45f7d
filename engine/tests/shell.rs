//! Shell completions and man pages, generated from the command line definition: a real
//! bash completes with them, groff renders every page without a warning, and
//! `scripts/install.sh` puts them where the shells and `man` look.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, conntrail, s, temp_dir, text};

/// The subcommands `conntrail help` lists (without `help` itself).
fn subcommands() -> Vec<String> {
    let help = text(&conntrail(&["help"]).stdout);
    let list = help.split("Commands:\n").nth(1).expect("commands");
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

/// What bash's programmable completion offers for `words` (the last one being completed),
/// with the script `conntrail completions bash` prints loaded.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = text(&conntrail(&["completions", "bash"]).stdout);
    let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "{script}\nCOMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
         COMP_POINT=${{#COMP_LINE}}; _conntrail conntrail \"${{COMP_WORDS[COMP_CWORD]}}\" \
         \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_commands_and_their_options() {
    let all = bash_completes(&["conntrail", ""]);
    for name in subcommands() {
        assert!(all.contains(&name), "{name} not offered: {all:?}");
    }
    assert_eq!(bash_completes(&["conntrail", "rep"]), ["replay"]);
    let options = bash_completes(&["conntrail", "replay", "--ov"]);
    assert_eq!(options, ["--overwrite"]);
    let sorts = bash_completes(&["conntrail", "show", "--sort", ""]);
    for key in ["start", "end", "duration", "bytes", "id", "log"] {
        assert!(sorts.contains(&key.to_string()), "{sorts:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    for shell in ["zsh", "fish"] {
        let out = conntrail(&["completions", shell]);
        assert!(out.status.success());
        let script = text(&out.stdout);
        for name in subcommands() {
            assert!(script.contains(&name), "{shell}: no {name}");
        }
    }
    let bad = conntrail(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// groff's rendering of a page as text; fails on any warning.
fn render(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tascii", "-ww", "-P", "-c"])
        .arg(page)
        .output()
        .expect("groff runs (groff-base)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "{}: {}",
        page.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn every_command_has_a_man_page_with_its_example_and_exit_statuses() {
    let dir = temp_dir("manpages");
    let out = conntrail(&["manpage", "--dir", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let main = render(&dir.join("conntrail.1"));
    for name in subcommands() {
        assert!(main.contains(&format!("conntrail-{name}(1)")) || main.contains(&name));
        let page = render(&dir.join(format!("conntrail-{name}.1")));
        assert!(
            page.contains(&format!("conntrail-{name}")),
            "{name}: {page}"
        );
        assert!(page.contains("Example:"), "{name}: {page}");
        assert!(page.contains("Exit status:"), "{name}: {page}");
    }
    let stdout = conntrail(&["manpage"]);
    assert_eq!(
        stdout.stdout,
        std::fs::read(dir.join("conntrail.1")).expect("page")
    );
    let again = conntrail(&["manpage", "--dir", s(&dir)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("conntrail.1 already exists"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn install_puts_the_binary_pages_and_completions_under_the_prefix() {
    let prefix = temp_dir("install");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    for _ in 0..2 {
        let out = Command::new("bash")
            .arg(&script)
            .env("PREFIX", &prefix)
            .env("CONNTRAIL_BIN", bin())
            .output()
            .expect("install runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for file in [
        "bin/conntrail",
        "share/man/man1/conntrail.1",
        "share/man/man1/conntrail-replay.1",
        "share/bash-completion/completions/conntrail",
        "share/zsh/site-functions/_conntrail",
        "share/fish/vendor_completions.d/conntrail.fish",
    ] {
        assert!(prefix.join(file).is_file(), "{file}");
    }
    let version = Command::new(prefix.join("bin/conntrail"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(version.status.success());
    assert!(render(&prefix.join("share/man/man1/conntrail-show.1")).contains("sort"));
    let _ = std::fs::remove_dir_all(&prefix);
}
