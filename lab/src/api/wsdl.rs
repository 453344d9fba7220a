//! The WSDL the lab serves at `?WSDL`: the operations it answers, in the real server's form
//! (`api.wsdl`, from W1), with the service's address filled in.

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
    "ExecuteSPGetConfiguration",
    "ExecuteSPSetConfiguration",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPDeployUpdate1",
    "ExecuteSPGetDeploymentsByUpdate1",
    "ExecuteSPGetAllDownstreamServers",
];

/// The WSDL of the operations served, with `address` as the service's location.
pub fn wsdl(address: &str) -> String {
    let mut operations = String::new();
    let mut port_type = String::from("  <wsdl:portType name=\"ApiRemotingSoap\">\n");
    let mut binding = String::from(
        "  <wsdl:binding name=\"ApiRemotingSoap\" type=\"tns:ApiRemotingSoap\">\n    <soap:binding transport=\"http://schemas.xmlsoap.org/soap/http\" />\n",
    );
    for op in OPERATIONS {
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
    include_str!("api.wsdl")
        .replace("OPERATIONS\n", &format!("{operations}{port_type}{binding}"))
        .replace("\"ADDRESS\"", &format!("\"{address}\""))
}
