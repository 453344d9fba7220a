//! How a web-service session proves who it is: NTLM with an account and its password (sspi-rs,
//! the library tiberius uses), or on Windows the process's own identity through SSPI.

use topology::{ApiTarget, Auth};

use crate::reach::settings::{ConnectOptions, SettingsError, read_secret};

/// The NTLM exchange of one connection (MS-NLMP through sspi-rs, the library tiberius uses).
pub(super) struct Ntlm {
    context: sspi::Ntlm,
    credentials: Option<sspi::AuthIdentityBuffers>,
    spn: String,
}

impl Ntlm {
    fn new(account: &str, password: String, host: &str) -> Result<Ntlm, String> {
        use sspi::{AuthIdentity, CredentialUse, Sspi, Username};
        let (domain, user) = match account.split_once('\\') {
            Some((domain, user)) => (Some(domain), user),
            None => (None, account),
        };
        let username = Username::new(user, domain).map_err(|e| format!("`{account}`: {e}"))?;
        let identity = AuthIdentity {
            username,
            password: password.into(),
        };
        let mut context = sspi::Ntlm::new();
        let acquired = context
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut context)
            .map_err(|e| e.to_string())?;
        Ok(Ntlm {
            context,
            credentials: acquired.credentials_handle,
            spn: format!("HTTP/{host}"),
        })
    }

    /// The next token: NEGOTIATE for `None`, AUTHENTICATE for the server's CHALLENGE.
    pub(super) fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        use sspi::{
            BufferType, ClientRequestFlags, DataRepresentation, SecurityBuffer, Sspi, SspiImpl,
        };
        let mut input = vec![SecurityBuffer::new(
            challenge.map(<[u8]>::to_vec).unwrap_or_default(),
            BufferType::Token,
        )];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut builder = self
            .context
            .initialize_security_context()
            .with_credentials_handle(&mut self.credentials)
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&self.spn)
            .with_input(&mut input)
            .with_output(&mut output);
        SspiImpl::initialize_security_context_impl(&mut self.context, &mut builder)
            .and_then(|mut r| r.resolve_to_result())
            .map_err(|e| e.to_string())?;
        Ok(std::mem::take(&mut output[0].buffer))
    }
}

/// The process's own Windows identity over SSPI (Windows only, as for SQL).
#[cfg(windows)]
pub(super) struct Integrated(winauth::windows::NtlmSspi);

#[cfg(windows)]
impl Integrated {
    fn new(host: &str) -> Result<Integrated, String> {
        winauth::windows::NtlmSspiBuilder::new()
            .target_spn(&format!("HTTP/{host}"))
            .build()
            .map(Integrated)
            .map_err(sspi_error)
    }

    pub(super) fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        use winauth::NextBytes;
        self.0
            .next_bytes(challenge)
            .map_err(sspi_error)?
            .ok_or_else(|| "SSPI produced no token".to_string())
    }
}

/// An SSPI failure by its name in winerror.h: FormatMessage often has no text for these
/// SECURITY_STATUS codes ("OS Error -2146893055 (FormatMessageW() returned error 317)").
#[cfg(windows)]
fn sspi_error(e: std::io::Error) -> String {
    let Some(code) = e.raw_os_error().map(|c| c as u32) else {
        return e.to_string();
    };
    let name = match code {
        0x8009_0301 => "SEC_E_INVALID_HANDLE",
        0x8009_0302 => "SEC_E_UNSUPPORTED_FUNCTION",
        0x8009_0303 => "SEC_E_TARGET_UNKNOWN",
        0x8009_0304 => "SEC_E_INTERNAL_ERROR",
        0x8009_0305 => "SEC_E_SECPKG_NOT_FOUND",
        0x8009_0308 => "SEC_E_INVALID_TOKEN",
        0x8009_030C => "SEC_E_LOGON_DENIED",
        0x8009_030D => "SEC_E_UNKNOWN_CREDENTIALS",
        0x8009_030E => "SEC_E_NO_CREDENTIALS",
        0x8009_0311 => "SEC_E_NO_AUTHENTICATING_AUTHORITY",
        _ => return e.to_string(),
    };
    format!(
        "SSPI {name} ({code:#010x}) with this process's own logon: `auth.method: integrated` needs \
         a domain account the server trusts; else use `method: windows` with a user and a \
         password source"
    )
}

/// How this session proves who it is.
pub(super) enum Login {
    Password(Box<Ntlm>),
    #[cfg(windows)]
    Integrated(Integrated),
}

impl Login {
    pub(super) fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        match self {
            Login::Password(ntlm) => ntlm.step(challenge),
            #[cfg(windows)]
            Login::Integrated(sspi) => sspi.step(challenge),
        }
    }
}

pub(super) fn login_for(
    api: &ApiTarget,
    options: &ConnectOptions,
) -> Result<(String, Login), SettingsError> {
    if let Some((user, password)) = &options.lab_windows_login {
        let ntlm = Ntlm::new(user, password.clone(), &api.host).map_err(SettingsError::Ntlm)?;
        return Ok((user.clone(), Login::Password(Box::new(ntlm))));
    }
    match &api.auth {
        Auth::Windows { user, password } | Auth::Sql { user, password } => {
            let password = read_secret(user, password)?;
            let ntlm = Ntlm::new(user, password, &api.host).map_err(SettingsError::Ntlm)?;
            Ok((user.clone(), Login::Password(Box::new(ntlm))))
        }
        #[cfg(windows)]
        // The account this process runs as, `DOMAIN\\user` as Windows sets it for the session:
        // what IIS authenticates and what the changes' adminName says.
        Auth::Integrated => Ok((
            match (std::env::var("USERDOMAIN"), std::env::var("USERNAME")) {
                (Ok(domain), Ok(user)) if !user.is_empty() => format!("{domain}\\{user}"),
                _ => "the Windows identity of this process".into(),
            },
            Login::Integrated(Integrated::new(&api.host).map_err(SettingsError::Ntlm)?),
        )),
        #[cfg(not(windows))]
        Auth::Integrated => Err(SettingsError::ApiAuthUnavailable),
    }
}
