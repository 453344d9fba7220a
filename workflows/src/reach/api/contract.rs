//! The live check of a server's contract: before any change, its WSDL (`?WSDL`, what ASP.NET
//! serves for an ASMX service, W1) is read and every operation and parameter the repair will
//! send is looked up in it, as the SQL path reads each procedure's parameters. A WSUS 3.0
//! server's operations are not public (W1 is a 2022 server's WSDL), so nothing is assumed:
//! what a server lacks is named before anything is sent to it. An ASMX service ignores request
//! elements it does not know (XmlSerializer skips them), so a parameter the server lacks would
//! otherwise be dropped silently, `failIfReplica` among them.
//!
//! A WSDL is parsed once per distinct text in a run: a thousand servers of one release cost one
//! parse.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use crate::reach::api::soap::parse_xml;

/// The operations a server's WSDL declares, each with its request's parameters in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Contract {
    operations: HashMap<String, Vec<String>>,
}

impl Contract {
    /// Reads a WSDL: the operations of its port types, each with the children of its request
    /// element (`<s:element name=OP>` / complexType / sequence).
    pub(super) fn parse(wsdl: &[u8]) -> Result<Contract, String> {
        let document = parse_xml(wsdl)?;
        let definitions = document
            .child("definitions")
            .ok_or("not a WSDL: no wsdl:definitions")?;
        let mut elements: HashMap<&str, Vec<String>> = HashMap::new();
        let schemas = definitions
            .child("types")
            .map(|t| t.children.iter().filter(|c| c.name == "schema"))
            .into_iter()
            .flatten();
        for schema in schemas {
            for element in schema.children.iter().filter(|c| c.name == "element") {
                let Some(name) = element.attribute("name") else {
                    continue;
                };
                let params = element
                    .path(&["complexType", "sequence"])
                    .map(|sequence| {
                        sequence
                            .children
                            .iter()
                            .filter_map(|p| p.attribute("name").map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                elements.insert(name, params);
            }
        }
        let mut operations = HashMap::new();
        for port_type in definitions.children.iter().filter(|c| c.name == "portType") {
            for operation in port_type.children.iter().filter(|c| c.name == "operation") {
                if let Some(name) = operation.attribute("name")
                    && let Some(params) = elements.get(name)
                {
                    operations.insert(name.to_string(), params.clone());
                }
            }
        }
        if operations.is_empty() {
            return Err("the WSDL declares no operation".into());
        }
        Ok(Contract { operations })
    }

    /// A parsed contract, shared with every server whose WSDL has the same text.
    pub(super) fn shared(wsdl: &[u8]) -> Result<Arc<Contract>, String> {
        static PARSED: OnceLock<Mutex<HashMap<u64, Arc<Contract>>>> = OnceLock::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        wsdl.hash(&mut hasher);
        let key = hasher.finish();
        let cache = PARSED.get_or_init(Default::default);
        if let Some(known) = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(known));
        }
        let parsed = Arc::new(Contract::parse(wsdl)?);
        cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, Arc::clone(&parsed));
        Ok(parsed)
    }

    pub(super) fn has(&self, operation: &str) -> bool {
        self.operations.contains_key(operation)
    }

    /// Whether `operation` exists and takes `parameter`.
    pub(super) fn takes(&self, operation: &str, parameter: &str) -> bool {
        self.operations
            .get(operation)
            .is_some_and(|params| params.iter().any(|p| p == parameter))
    }

    /// What `server` lacks of `needs` (operation, parameters), in words; empty when nothing.
    pub(super) fn lacks(&self, server: &str, needs: &[(&str, &[&str])]) -> Vec<String> {
        let mut lacking = Vec::new();
        for (operation, params) in needs {
            match self.operations.get(*operation) {
                None => lacking.push(format!("{server} has no {operation}")),
                Some(declared) => {
                    for p in params.iter().filter(|p| !declared.iter().any(|d| d == *p)) {
                        lacking.push(format!("{server}'s {operation} has no parameter {p}"));
                    }
                }
            }
        }
        lacking
    }
}

/// The request elements a repair sends, by operation (what [`super::ApiSession`] writes).
pub(super) const REPAIR: &[(&str, &[&str])] = &[
    ("ExecuteSPGetConfiguration", &[]),
    ("ExecuteSPSetConfiguration", &["row"]),
    ("ExecuteSPGetDeploymentsByUpdate1", &["id"]),
    (
        "ExecuteSPDeclineUpdate",
        &["updateId", "adminName", "failIfReplica"],
    ),
    (
        "ExecuteSPDeployUpdate1",
        &[
            "updateId",
            "deploymentAction",
            "targetGroupId",
            "deadline",
            "adminName",
            "isAssigned",
        ],
    ),
];

/// How the update's revisions are read: one operation where the server has it.
pub(super) const REVISIONS: (&str, &[&str]) =
    ("ExecuteSPGetRevisions", &["preferredCulture", "updateId"]);

/// ... or the way the 3.0 API itself reads them where it does not: the latest revision's
/// number, each earlier one in turn, and each revision's row (IUpdate.IsLatestRevision,
/// HasEarlierRevision and UpdateServer.GetUpdate(UpdateRevisionId), learn.microsoft.com
/// ms752100, ms752039, ms747173; the operations are W1's).
pub(super) const REVISIONS_ONE_BY_ONE: &[(&str, &[&str])] = &[
    ("ExecuteSPGetLatestRevisionNumberForUpdate", &["updateId"]),
    (
        "ExecuteSPGetPreviousRevision",
        &["updateId", "revisionNumber"],
    ),
    ("ExecuteSPGetUpdateById", &["preferredCulture", "id"]),
];

/// Accepting the update's licence (IUpdate.AcceptLicenseAgreement -> ExecuteSPAcceptEula, W4).
pub(super) const ACCEPT_LICENCE: (&str, &[&str]) =
    ("ExecuteSPAcceptEula", &["eulaId", "adminName", "updateId"]);

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = include_bytes!("../../../../../shared/data/wsus/ApiRemoting30-ws2022.wsdl");

    #[test]
    fn a_real_servers_wsdl_has_everything_the_repair_sends() {
        let contract = Contract::parse(REAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(contract.lacks("ws2022", REPAIR), Vec::<String>::new());
        assert_eq!(contract.lacks("ws2022", &[REVISIONS]), Vec::<String>::new());
        assert_eq!(
            contract.lacks("ws2022", REVISIONS_ONE_BY_ONE),
            Vec::<String>::new()
        );
        assert_eq!(
            contract.lacks("ws2022", &[ACCEPT_LICENCE]),
            Vec::<String>::new()
        );
        assert!(contract.takes("ExecuteSPSetConfiguration", "programKeys"));
        assert!(contract.has("ExecuteSPGetProgramKeys"));
        assert!(contract.has("GetServerVersion"));
    }

    #[test]
    fn what_a_server_lacks_is_named() {
        let text = String::from_utf8_lossy(REAL)
            .replace("name=\"failIfReplica\"", "name=\"somethingElse\"")
            .replace(
                "<wsdl:operation name=\"ExecuteSPDeployUpdate1\">",
                "<wsdl:operation name=\"Gone\">",
            );
        let contract = Contract::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let lacking = contract.lacks("wsus-paris", REPAIR);
        assert!(
            lacking.contains(
                &"wsus-paris's ExecuteSPDeclineUpdate has no parameter failIfReplica".to_string()
            ),
            "{lacking:?}"
        );
        assert!(lacking.contains(&"wsus-paris has no ExecuteSPDeployUpdate1".to_string()));
        assert!(Contract::parse(b"<html>no</html>").is_err());
    }
}
