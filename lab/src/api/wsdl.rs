//! The WSDL the lab serves at `?WSDL`: the operations it answers, in the real server's form
//! (`api.wsdl`, from W1), with the service's address filled in, as one server has them: a fault
//! may take an operation or one of its parameters away from a server (a WSUS older than the
//! 2022 server W1 comes from), and that server's WSDL then lacks it.

use crate::faults::Faults;

/// The service's namespace and path (W1).
pub const NS: &str = "http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService";
pub const PATH: &str = "/ApiRemoting30/WebService.asmx";

/// The operations served (also the names faults target them by).
pub const OPERATIONS: &[&str] = &[
    "GetServerVersion",
    "GetCurrentUserRole",
    "GetDatabaseConfiguration",
    "ExecuteSPGetRevisions",
    "ExecuteSPGetUpdateById",
    "ExecuteSPGetLatestRevisionNumberForUpdate",
    "ExecuteSPGetPreviousRevision",
    "ExecuteSPGetConfiguration",
    "ExecuteSPSetConfiguration",
    "ExecuteSPGetProgramKeys",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPDeployUpdate1",
    "ExecuteSPAcceptEula",
    "ExecuteSPGetDeploymentsByUpdate1",
    "ExecuteSPGetAllDownstreamServers",
    "ExecuteSPGetComputerTargetByName",
    "ExecuteSPDeleteComputer",
];

const TEMPLATE: &str = include_str!("api.wsdl");

/// The request element of `operation` in the template: its text from `<s:element name=...>` to
/// its closing tag (six spaces deep, as W1 indents it).
fn request_element(operation: &str) -> Option<(usize, usize)> {
    let open = format!("      <s:element name=\"{operation}\">");
    let start = TEMPLATE.find(&open)?;
    let close = "\n      </s:element>\n";
    let end = start + TEMPLATE[start..].find(close)? + close.len();
    Some((start, end))
}

/// The parameters of `operation` as the WSDL declares them, in order; `None` for an operation
/// the lab does not serve.
pub fn parameters(operation: &str) -> Option<Vec<String>> {
    if !OPERATIONS.contains(&operation) {
        return None;
    }
    let (start, end) = request_element(operation)?;
    let element = &TEMPLATE[start..end];
    Some(
        element
            .match_indices("name=\"")
            .skip(1)
            .filter_map(|(at, m)| {
                let rest = &element[at + m.len()..];
                rest.split('"').next().map(str::to_string)
            })
            .collect(),
    )
}

/// `server`'s WSDL, with `address` as the service's location.
pub fn wsdl(address: &str, server: &str, faults: &Faults) -> String {
    let served: Vec<&str> = OPERATIONS
        .iter()
        .copied()
        .filter(|op| !faults.operation_removed(server, op))
        .collect();
    let mut types = TEMPLATE.to_string();
    for op in OPERATIONS {
        let Some((start, end)) = request_element(op) else {
            continue;
        };
        let original = &TEMPLATE[start..end];
        let mut element = original.to_string();
        if !served.contains(op) {
            element.clear();
        } else {
            for name in faults.parameters_removed(server, op) {
                element = element
                    .lines()
                    .filter(|line| !line.contains(&format!(" name=\"{name}\" ")))
                    .map(|line| format!("{line}\n"))
                    .collect();
            }
        }
        types = types.replacen(original, &element, 1);
    }
    let mut operations = String::new();
    let mut port_type = String::from("  <wsdl:portType name=\"ApiRemotingSoap\">\n");
    let mut binding = String::from(
        "  <wsdl:binding name=\"ApiRemotingSoap\" type=\"tns:ApiRemotingSoap\">\n    <soap:binding transport=\"http://schemas.xmlsoap.org/soap/http\" />\n",
    );
    for op in served {
        operations.push_str(&format!(
            "  <wsdl:message name=\"{op}SoapIn\">\n    <wsdl:part name=\"parameters\" element=\"tns:{op}\" />\n  </wsdl:message>\n  <wsdl:message name=\"{op}SoapOut\">\n    <wsdl:part name=\"parameters\" element=\"tns:{op}Response\" />\n  </wsdl:message>\n"
        ));
        port_type.push_str(&format!(
            "    <wsdl:operation name=\"{op}\">\n      <wsdl:input message=\"tns:{op}SoapIn\" />\n      <wsdl:output message=\"tns:{op}SoapOut\" />\n    </wsdl:operation>\n"
        ));
        binding.push_str(&format!(
            "    <wsdl:operation name=\"{op}\">\n      <soap:operation soapAction=\"{NS}/{op}\" style=\"document\" />\n      <wsdl:input>\n        <soap:body use=\"literal\" />\n      </wsdl:input>\n      <wsdl:output>\n        <soap:body use=\"literal\" />\n      </wsdl:output>\n    </wsdl:operation>\n"
        ));
    }
    port_type.push_str("  </wsdl:portType>\n");
    binding.push_str("  </wsdl:binding>\n");
    let address = quick_xml::escape::escape(address);
    types
        .replace("OPERATIONS\n", &format!("{operations}{port_type}{binding}"))
        .replace("\"ADDRESS\"", &format!("\"{address}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_served_is_declared_with_its_parameters() {
        for op in OPERATIONS {
            assert!(parameters(op).is_some(), "{op} has no element in api.wsdl");
        }
        assert_eq!(
            parameters("ExecuteSPDeclineUpdate"),
            Some(vec![
                "updateId".to_string(),
                "adminName".into(),
                "failIfReplica".into()
            ])
        );
        assert_eq!(parameters("GetServerVersion"), Some(Vec::new()));
        assert_eq!(parameters("ExecuteSPNoSuchThing"), None);
    }

    #[test]
    fn a_fault_takes_an_operation_or_a_parameter_out_of_one_servers_wsdl() {
        let faults: Faults = serde_yaml::from_str(
            "faults:\n  - { server: paris, operation: ExecuteSPGetRevisions }\n  - { server: paris, operation: ExecuteSPDeclineUpdate, without: failIfReplica }\n",
        )
        .unwrap();
        let paris = wsdl("http://paris/x", "paris", &faults);
        let rome = wsdl("http://rome/x", "rome", &faults);
        assert!(!paris.contains("ExecuteSPGetRevisions\""), "{paris}");
        assert!(rome.contains("<s:element name=\"ExecuteSPGetRevisions\">"));
        assert!(paris.contains("<s:element name=\"ExecuteSPDeclineUpdate\">"));
        assert!(!paris.contains("name=\"failIfReplica\""));
        assert!(rome.contains("name=\"failIfReplica\""));
    }
}
