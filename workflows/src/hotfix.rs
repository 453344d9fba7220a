//! Whether a server still needs what keeps the KB 954960 fault from coming back: the repair
//! resets the approvals, while the hotfix (WSUS 3.0 SP1 3.1.6001.65 -> .66) or SP2 fixes the
//! client web service itself (KB 954960, `shared/docs/kb954960.md`, Resolution).
//!
//! Read from the version `GetServerVersion` reports: 3.0 RTM `3.0.6000.374`, SP1
//! `3.1.6001.65` (MS-WSUSSS note 13), SP2 `3.2.7600.x`. The KB names the hotfix by the file
//! version of `Microsoft.UpdateServices.WebServices.Client.dll` (3.1.6001.66); whether the
//! hotfix changes what `GetServerVersion` reports is not public, so an SP1 server reporting
//! `.65` is told to check that file rather than assumed fixed.

use serde::Serialize;

/// Per server: whether it needs the hotfix or SP2, and what to do, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// `Some(true)`: install the hotfix or SP2; `Some(false)`: not needed; `None`: unknown.
    pub needs_hotfix: Option<bool>,
    pub advice: String,
}

/// The advice for a server reporting `version` (`None`: not read, as over SQL).
pub fn advice(version: Option<&str>) -> Advice {
    let Some(version) = version else {
        return Advice {
            needs_hotfix: None,
            advice: "WSUS version unknown over SQL (SUSDB keeps no documented record of it; the \
                     web service's GetServerVersion reports it)"
                .into(),
        };
    };
    let parts: Vec<u32> = version
        .split('.')
        .map_while(|p| p.trim().parse().ok())
        .collect();
    let (needs, words) = match parts.as_slice() {
        [3, 0, ..] => (
            Some(true),
            "WSUS 3.0 RTM: install SP2 (or SP1 and hotfix 954960), or the fault can come back"
                .to_string(),
        ),
        [3, 1, _, revision, ..] if *revision >= 66 => {
            (Some(false), "WSUS 3.0 SP1 with hotfix 954960".to_string())
        }
        [3, 1, ..] => (
            Some(true),
            "WSUS 3.0 SP1: install hotfix 954960 or SP2, unless the hotfix is already there (it \
             may not change this number: Microsoft.UpdateServices.WebServices.Client.dll is \
             3.1.6001.66 with it)"
                .to_string(),
        ),
        [3, 2, ..] => (Some(false), "WSUS 3.0 SP2: has the fix".to_string()),
        [major, ..] if *major > 3 => (
            Some(false),
            "newer than WSUS 3.0: not affected by this fault".to_string(),
        ),
        _ => (None, "not a WSUS 3.0 version this build knows".to_string()),
    };
    Advice {
        needs_hotfix: needs,
        advice: format!("{version}: {words}"),
    }
}

/// The summary line: how many servers still need the hotfix or SP2, and how many are unknown.
pub fn summary(advices: &[Advice]) -> String {
    let needs = advices
        .iter()
        .filter(|a| a.needs_hotfix == Some(true))
        .count();
    let unknown = advices.iter().filter(|a| a.needs_hotfix.is_none()).count();
    let mut line = format!(
        "hotfix 954960 or SP2: {needs} of {} server(s) still need it",
        advices.len()
    );
    if unknown > 0 {
        line.push_str(&format!(", {unknown} unknown (version not read)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_wsus_30_release_gets_its_own_advice() {
        assert_eq!(advice(Some("3.0.6000.374")).needs_hotfix, Some(true));
        let sp1 = advice(Some("3.1.6001.65"));
        assert_eq!(sp1.needs_hotfix, Some(true));
        assert!(sp1.advice.contains("3.1.6001.66"), "{}", sp1.advice);
        assert_eq!(advice(Some("3.1.6001.66")).needs_hotfix, Some(false));
        assert_eq!(advice(Some("3.2.7600.226")).needs_hotfix, Some(false));
        assert_eq!(advice(Some("10.0.17763.1")).needs_hotfix, Some(false));
        assert_eq!(advice(Some("banana")).needs_hotfix, None);
        assert_eq!(advice(None).needs_hotfix, None);
        let line = summary(&[
            advice(Some("3.1.6001.65")),
            advice(None),
            advice(Some("3.2.7600.226")),
        ]);
        assert_eq!(
            line,
            "hotfix 954960 or SP2: 1 of 3 server(s) still need it, 1 unknown (version not read)"
        );
    }
}
