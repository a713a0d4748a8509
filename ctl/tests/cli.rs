//! The CLI's parsing and shell integration, through the real `tdmq-backup` binary: what a user's
//! shell and scripts see. Talking to daemons is covered by the e2e tests.

use std::process::{Command, Output};

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tdmq-backup"))
        .args(args)
        // Nothing from the caller's environment may change what is parsed.
        .env_remove("TDMQ_BACKUP_TOKEN_FILE")
        .env_remove("TDMQ_BACKUP_INGESTER")
        .output()
        .expect("running tdmq-backup")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bash_completes_verbs_from_the_generated_script() {
    let bin = env!("CARGO_BIN_EXE_tdmq-backup");
    let script = format!(
        r#"source <("{bin}" completions bash) || exit 10
complete -p tdmq-backup >/dev/null || exit 11
fn=$(complete -p tdmq-backup | sed -n 's/.*-F \([^ ]*\).*/\1/p')
COMP_WORDS=(tdmq-backup ru); COMP_CWORD=1; COMP_LINE="tdmq-backup ru"; COMP_POINT=${{#COMP_LINE}}
"$fn" tdmq-backup ru tdmq-backup
echo "${{COMPREPLY[@]}}"
COMP_WORDS=(tdmq-backup rule de); COMP_CWORD=2; COMP_LINE="tdmq-backup rule de"; COMP_POINT=${{#COMP_LINE}}
"$fn" tdmq-backup de rule
echo "${{COMPREPLY[@]}}""#
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("running bash");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().map(|l| l.trim()), Some("rule"), "{stdout}");
    assert_eq!(lines.get(1).map(|l| l.trim()), Some("delete"), "{stdout}");
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error_listing_the_shells() {
    let out = ctl(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"),
        "{stderr}"
    );
}

#[test]
fn a_closed_pipe_while_printing_completions_is_not_a_crash() {
    let bin = env!("CARGO_BIN_EXE_tdmq-backup");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(r#"set -o pipefail; "{bin}" completions zsh | head -c 1 >/dev/null; echo "${{PIPESTATUS[0]}}""#))
        .output()
        .expect("running bash");
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "0");
}

#[test]
fn the_control_token_flag_works_after_the_verb_too() {
    let missing = "/nonexistent/control-token";
    // Parsed (not a usage error, which exits 2): the token file itself is what fails.
    for args in [
        vec!["status", "--auth-token-file", missing],
        vec!["--auth-token-file", missing, "status"],
        vec!["--token-file", missing, "status"],
    ] {
        let out = ctl(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(missing), "{args:?}: {stderr}");
    }
}

#[test]
fn dash_o_is_short_for_output() {
    let long = ctl(&[
        "--ingester",
        "http://127.0.0.1:9",
        "rule",
        "list",
        "--output",
        "yaml",
    ]);
    let short = ctl(&[
        "--ingester",
        "http://127.0.0.1:9",
        "rule",
        "list",
        "-o",
        "yaml",
    ]);
    assert_eq!(long.status.code(), Some(2));
    assert_eq!(short.status.code(), Some(2));
    assert!(
        text(&short.stderr).contains("possible values: table, wide, json"),
        "{}",
        text(&short.stderr)
    );
}

#[test]
fn every_verb_shows_an_example_and_describes_its_name() {
    for verb in [
        &["status"][..],
        &["logs"],
        &["segments"],
        &["completions"],
        &["rule", "create"],
        &["rule", "list"],
        &["rule", "show"],
        &["rule", "edit"],
        &["rule", "delete"],
        &["rule", "pause"],
        &["rule", "resume"],
        &["rule", "flush"],
        &["rule", "skip"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = ctl(&args);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{verb:?}");
        assert!(help.contains("Example"), "{verb:?} has no example:\n{help}");
        assert!(help.contains("tdmq-backup "), "{verb:?}:\n{help}");
        let usage = help
            .lines()
            .find(|l| l.starts_with("Usage:"))
            .unwrap_or_default();
        if usage.contains("<NAME>") || usage.contains("[NAME]") {
            // The Arguments section, up to the Options heading, says more than the name.
            let section = help
                .split("Arguments:")
                .nth(1)
                .and_then(|rest| rest.split("Options:").next())
                .unwrap_or_default();
            let described = section
                .replace("<NAME>", "")
                .replace("[NAME]", "")
                .chars()
                .any(char::is_alphabetic);
            assert!(described, "{verb:?} does not describe <NAME>:\n{help}");
        }
    }
}

#[test]
fn a_daemon_that_never_answers_is_reported_unreachable_after_the_timeout() {
    // Accepted by the kernel's backlog, never served: a hung daemon.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let out = ctl(&["--ingester", &url, "--timeout", "1s", "rule", "list"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn an_unsupported_scheme_is_named_before_any_connection() {
    let out = ctl(&["--ingester", "foo://bar", "rule", "list"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unsupported scheme foo://"), "{stderr}");
}

#[test]
fn logs_limit_zero_is_a_usage_error() {
    let out = ctl(&["logs", "orders", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_token_file_with_two_lines_is_refused_without_printing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.token");
    std::fs::write(&path, "first-secret\nsecond-secret\n").expect("write");
    let path = path.to_string_lossy().into_owned();
    let out = ctl(&["--auth-token-file", &path, "rule", "list"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("more than one line"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
