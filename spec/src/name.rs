//! A link's name: it appears in metrics labels, log lines, the control API's paths and the
//! names of Kubernetes objects, so it is kept to what all of them take.

use crate::SpecError;

/// The longest link name: a DNS-1123 subdomain.
pub const MAX_LINK_NAME_LEN: usize = 253;

/// The longest part of a link name between dots: a DNS-1123 label.
const MAX_LABEL_LEN: usize = 63;

/// A DNS-1123 subdomain: labels of lowercase letters, digits and '-', each starting and ending
/// with a letter or digit and at most 63 long, joined by '.' (the console names a host's links
/// `namespace.name`, so links of different namespaces never collide), at most
/// [`MAX_LINK_NAME_LEN`] characters.
pub fn validate_link_name(field: &str, name: &str) -> Result<(), SpecError> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label.starts_with(alphanumeric)
            && label.ends_with(alphanumeric)
            && label.chars().all(|c| alphanumeric(c) || c == '-')
    };
    let ok = name.len() <= MAX_LINK_NAME_LEN && name.split('.').all(label_ok);
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{name:?} is not a link name"),
            "use lowercase letters, digits and '-', starting and ending with a letter or digit (parts of at most 63 may be joined by '.'), e.g. pump-17-ssh",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_dns_subdomains() {
        for good in [
            "link",
            "pump-17-ssh",
            "7",
            &"a".repeat(63),
            "plant-a.pump-17",
        ] {
            assert_eq!(validate_link_name("n", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Pump",
            "pump_17",
            "pump..17",
            ".pump",
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
