//! Errors said the way a person running the proxy reads them: one line, each cause once.

/// An error and its causes on one line, like anyhow's `{:#}`, without the repeats: aya's errors
/// repeat their cause in their own text ("map error: failed to create map `X`", then "failed to
/// create map `X`"), so a cause that the text kept before it ends with, or that a longer text
/// after it starts with, is left out.
pub fn causes(err: &anyhow::Error) -> String {
    let texts: Vec<String> = err.chain().map(ToString::to_string).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let said_before = kept
            .last()
            .is_some_and(|last| last.ends_with(text.as_str()));
        let said_after = texts
            .get(index + 1)
            .is_some_and(|next| next.len() > text.len() && next.starts_with(text.as_str()));
        if !said_before && !said_after {
            kept.push(text);
        }
    }
    kept.join(": ")
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `X`")]
    struct Create(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Map(#[source] Create);

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let err = anyhow::Error::new(Map(Create(io))).context("loading the eBPF object failed");
        assert_eq!(
            causes(&err),
            "loading the eBPF object failed: map error: failed to create map `X`: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn a_cause_repeated_whole_is_said_once_not_dropped() {
        let err = anyhow::anyhow!("no such device").context("no such device");
        assert_eq!(causes(&err), "no such device");
        let err = anyhow::anyhow!("refused").context("connect failed");
        assert_eq!(causes(&err), "connect failed: refused");
    }
}
