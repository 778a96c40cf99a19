//! The one error every check returns: which field, what is wrong with it, and what to write
//! instead.

/// A value that cannot be used. Displayed as one sentence, `<field>: <problem>; <fix>`.
///
/// `field` is where the value came from, in the words of whoever wrote it: `--allow`,
/// `spec.allowedSourceRanges[1]`, `links[2] (pump-17-ssh).device`. `problem` and `fix` depend
/// only on the value, so the same mistake reads the same wherever it is made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}; {fix}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl SpecError {
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The problem and the fix without the field: for a caller that names the field itself,
    /// as clap does for a flag's value.
    pub fn reason(&self) -> String {
        format!("{}; {}", self.problem, self.fix)
    }
}
