//! Firehose's rule for delivery stream names.

/// Checks a delivery stream name: 1–64 characters from `[a-zA-Z0-9_.-]`.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "must be 1 to 64 characters long, is {} characters",
            name.chars().count()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(bad) => Err(format!(
            "character {bad:?} is not allowed; use only letters, digits, '_', '.' and '-'"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_stream_name;

    #[test]
    fn accepts_firehose_names_and_rejects_others() {
        assert!(check_stream_name("web-logs_2024.v1").is_ok());
        assert!(check_stream_name(&"a".repeat(64)).is_ok());
        assert!(check_stream_name("").is_err());
        assert!(check_stream_name(&"a".repeat(65)).is_err());
        assert!(check_stream_name("has space").unwrap_err().contains("' '"));
        assert!(check_stream_name("slash/").is_err());
    }
}
