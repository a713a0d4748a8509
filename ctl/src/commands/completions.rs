//! `tdmq-backup completions SHELL`: the completion script clap derives from the command line,
//! so it can never list a flag the CLI does not have.

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The script for `shell`. Built in memory because clap_complete panics on a write error
/// (a closed pipe), and main decides how to treat those.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name.clone(), &mut script);
    if shell == Shell::Bash {
        script = fix_bash_state_names(&script, &name);
    }
    script
}

/// clap_complete 4.6's bash script names its states inconsistently for a binary whose name holds
/// a `-`: the walk over the words records `tdmq__backup__subcmd__rule` while the branch that
/// lists candidates matches `tdmq__subcmd__backup__subcmd__rule`, so nothing after the first
/// verb completes. Renaming the second form to the first makes them agree.
fn fix_bash_state_names(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let walked = name.replace('-', "__");
    let matched = name.replace('-', "__subcmd__");
    if walked == matched {
        return script.to_vec();
    }
    text.replace(&matched, &walked).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_the_verbs_and_the_global_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell)).expect("utf-8");
            for word in [
                "rule",
                "status",
                "logs",
                "segments",
                "--auth-token-file",
                "--output",
            ] {
                assert!(text.contains(word), "{shell}: no {word:?} in the script");
            }
        }
    }
}
