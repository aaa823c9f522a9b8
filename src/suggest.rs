//! "Did you mean ...?" for every unknown name a user can write: config
//! keys, policy criteria and operators, annotations.

/// The known name nearest to `name`, if it is plausibly a typo of it: close
/// by Jaro-Winkler (which favours a shared start, so `authenticated` finds
/// `authenticated_user`), or within a few edits (a third of the longer name,
/// at least two, so `emial` finds `email`). The fewest edits win (the first
/// listed, between equals). Nothing when no name is meant.
pub(crate) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .filter(|k| {
            let longer = name.chars().count().max(k.chars().count());
            let edits = strsim::levenshtein(name, k);
            strsim::jaro_winkler(name, k) > 0.8 || (edits <= (longer / 3).max(2) && edits < longer)
        })
        .min_by_key(|k| strsim::levenshtein(name, k))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_only_plausible_typos() {
        let criteria = ["accept", "reject", "authenticated_user", "email", "user", "domain", "claim/"];
        assert_eq!(closest("usr", &criteria), Some("user"));
        assert_eq!(closest("emial", &criteria), Some("email"));
        assert_eq!(closest("authenticated", &criteria), Some("authenticated_user"));
        assert_eq!(closest("x", &["and", "or", "not", "nor"]), None);
        assert_eq!(closest("xor", &["and", "or", "not", "nor"]), Some("or"));
        assert_eq!(closest("totally_different", &criteria), None);
        assert_eq!(closest("allowed_user", &["allowed_users", "allowed_domains"]), Some("allowed_users"));
    }
}
