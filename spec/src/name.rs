//! A link's name: it appears in metrics labels, log lines, the control API's paths and the
//! names of Kubernetes objects, so it is kept to what all of them take.

use crate::SpecError;

/// The longest link name: a DNS-1123 label.
pub const MAX_LINK_NAME_LEN: usize = 63;

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most [`MAX_LINK_NAME_LEN`] characters.
pub fn validate_link_name(field: &str, name: &str) -> Result<(), SpecError> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= MAX_LINK_NAME_LEN
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name.chars().all(|c| alphanumeric(c) || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{name:?} is not a link name"),
            format!(
                "use at most {MAX_LINK_NAME_LEN} lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. pump-17-ssh"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_dns_labels() {
        for good in ["link", "pump-17-ssh", "7", &"a".repeat(63)] {
            assert_eq!(validate_link_name("n", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Pump",
            "pump_17",
            "pump.17",
            "-pump",
            "pump-",
            &"a".repeat(64),
        ] {
            assert!(
                validate_link_name("n", bad)
                    .unwrap_err()
                    .fix
                    .contains("pump-17-ssh"),
                "{bad:?}"
            );
        }
    }
}
