//! Writes a synthetic corpus of WSUS logs for the `diagnose` benchmark (BENCHMARKS.md): client
//! WindowsUpdate.log files full of the usual noise with a KB 954960 failure now and then, half in
//! the Windows XP-7 form and half in the Windows 10 form (`Get-WindowsUpdateLog`'s text, the fault
//! as a `<detail>` line), and server SoftwareDistribution.log files with the matching faults, all
//! deterministic.
//!
//!     cargo run --release -p diagnose --example gen_logs -- /tmp/corpus 2000
//!
//! Arguments: the directory, the size in MB (about 90% client logs, 10% server logs).

#![allow(clippy::print_stdout, reason = "a generator says what it wrote")]

use std::io::{BufWriter, Write};
use std::path::Path;

const CLIENT_NOISE: &[&str] = &[
    "AU\t#############",
    "AU\t## START ##  AU: Search for updates",
    "Agent\t*************",
    "Agent\t** START **  Agent: Finding updates [CallerId = AutomaticUpdates]",
    "Agent\t*********",
    "Agent\t  * Online = Yes; Ignore download priority = No",
    "Agent\t  * Criteria = \"IsInstalled=0 and DeploymentAction='Installation' or IsPresent=1 and DeploymentAction='Uninstallation'\"",
    "Agent\t  * ServiceID = {3DA21691-E39D-4DA6-8A4B-B43877BCB1B7} Managed",
    "Misc\tValidating signature for C:\\WINDOWS\\SoftwareDistribution\\WuRedir\\9482F4B4-E343-43B6-B170-9A65BC822C77\\wuredir.cab:",
    "Misc\t Microsoft signed: Yes",
    "Setup\t***********  Setup: Checking whether self-update is required  ***********",
    "Setup\t  * Inf file: C:\\WINDOWS\\SoftwareDistribution\\SelfUpdate\\Default\\wuaueng.inf",
    "Setup\tUpdate NOT required for C:\\WINDOWS\\system32\\cdm.dll: target version = 7.6.7600.256, required version = 7.6.7600.256",
    "PT\t+++++++++++  PT: Synchronizing server updates  +++++++++++",
    "DnldMgr\t*********** DnldMgr: Copy update to cache [UpdateId = {8F0B3D4F-0C4B-4B9A-8A50-5D0C1A0F5B1E}.101] ***********",
    "Report\tREPORT EVENT: {D2F3A1C4-7E5B-4C2D-9F7A-1B2C3D4E5F60}\t2009-03-27 11:55:29:193+0100\t1\t147\t101\t{00000000-0000-0000-0000-000000000000}\t0\t0\tAutomaticUpdates\tSuccess\tSoftware Synchronization\tWindows Update Client successfully detected 0 updates.",
    "CltUI\tAU client got new directive = 'SVC_SHOW_UI', serviceId = {3DA21691-E39D-4DA6-8A4B-B43877BCB1B7}, return = 0x00000000",
];

/// Lines of the Windows 10 form, as the real logs in `shared/data/reallogs` have them.
const MODERN_NOISE: &[&str] = &[
    "ProtocolTalker  OK to reuse existing configuration",
    "ProtocolTalker  Existing cookie is valid, just use it",
    "WebServices     Auto proxy settings for this web service call.",
    "IdleTimer       WU operation (CAgentProtocolTalker::SyncUpdates_WithRecover) started; operation # 45048; does use network; is at background priority",
    "Agent           Added service 8B24B027-1DEE-BABB-9A95-3517DFB9C552 to sequential scan list",
    "SLS             Get response for service 9482F4B4-E343-43B6-B170-9A65BC822C77 - forceExpire[False] asyncRefreshOnExpiry[True]",
    "ProtocolTalker  SyncUpdates - 0 bad out of 60 metadata signatures checked using Enforce enforcement mode (raw mode: Enforce).",
    "Shared          UpdateNetworkState Ipv4, cNetworkInterfaces = 1.",
];

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(mb)) = (
        args.first(),
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        writeln!(std::io::stderr(), "usage: gen_logs DIR MEGABYTES")?;
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let clients_dir = dir.join("clients");
    let servers_dir = dir.join("servers");
    std::fs::create_dir_all(&clients_dir)?;
    let total = mb * 1_000_000;
    let client_bytes = total / 10 * 9;
    let per_client: u64 = 400_000;
    let clients = (client_bytes / per_client).max(1);
    let servers = 20u64;
    let per_server = (total - client_bytes) / servers;
    let mut rng = fastrand::Rng::with_seed(954_960);
    let mut faults: Vec<Vec<String>> = vec![Vec::new(); usize::try_from(servers).unwrap_or(1)];
    for c in 0..clients {
        let server = c % servers;
        let path = clients_dir.join(format!("PC-{c:05}.log"));
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let mut written = 0u64;
        let mut second = 0u64;
        let modern = c % 2 == 1;
        while written < per_client {
            second += 1;
            let stamp = if modern {
                format!(
                    "2020/11/{:02} {:02}:{:02}:{:02}.{:07} 8668  1188  ",
                    1 + (second / 86_400) % 28,
                    (second / 3600) % 24,
                    (second / 60) % 60,
                    second % 60,
                    rng.u32(..10_000_000)
                )
            } else {
                format!(
                    "2009-03-{:02}\t{:02}:{:02}:{:02}:{:03}\t 788\tee4\t",
                    1 + (second / 86_400) % 28,
                    (second / 3600) % 24,
                    (second / 60) % 60,
                    second % 60,
                    rng.u32(..1000)
                )
            };
            let fault = rng.u32(..2000) == 0;
            let line = if fault && modern {
                let id = format!("{c:08x}-{:04x}-4000-8000-{:012x}", server, second);
                faults[usize::try_from(server).unwrap_or(0)].push(id.clone());
                format!(
                    "{stamp}ProtocolTalker  ServiceId = {{3DA21691-E39D-4DA6-8A4B-B43877BCB1B7}}, Server URL = http://wsus-{server:02}/ClientWebService/client.asmx\n\
                     {stamp}WebServices     WS error: The body of the received message contained a fault.\n\
                     {stamp}WebServices     WS error: Fault occurred\n\
                     {stamp}WebServices     WS error: <detail><ErrorCode>InternalServerError</ErrorCode><Message></Message><ID>{id}</ID><Method>\"http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService/SyncUpdates\"</Method></detail>\n"
                )
            } else if modern {
                format!("{stamp}{}\n", MODERN_NOISE[rng.usize(..MODERN_NOISE.len())])
            } else if fault {
                // A KB 954960 failure (one in 2,000 lines), the fault ID derived from its place.
                let id = format!("{c:08x}-{:04x}-4000-8000-{:012x}", server, second);
                faults[usize::try_from(server).unwrap_or(0)].push(id.clone());
                format!(
                    "{stamp}PT\t  + ServiceId = {{3DA21691-E39D-4DA6-8A4B-B43877BCB1B7}}, Server URL = http://wsus-{server:02}/ClientWebService/client.asmx\n\
                     {stamp}PT\tWARNING: SyncUpdates failure, error = 0x8024400E, soap client error = 7, soap error code = 400, HTTP status code = 200\n\
                     {stamp}PT\tWARNING: SOAP Fault: 0x000190\n\
                     {stamp}PT\tWARNING:     ErrorCode:InternalServerError(5)\n\
                     {stamp}PT\tWARNING:     ID:{id}\n"
                )
            } else {
                format!("{stamp}{}\n", CLIENT_NOISE[rng.usize(..CLIENT_NOISE.len())])
            };
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        out.flush()?;
    }
    for (s, ids) in faults.iter().enumerate() {
        let server_dir = servers_dir.join(format!("wsus-{s:02}"));
        std::fs::create_dir_all(&server_dir)?;
        let mut out = BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(server_dir.join("SoftwareDistribution.log"))?,
        );
        let mut written = 0u64;
        let mut pending = ids.iter();
        let mut n = 0u64;
        while written < per_server {
            n += 1;
            let stamp = format!(
                "2009-03-27 {:02}:{:02}:{:02}.{:03} UTC",
                (n / 3600) % 24,
                (n / 60) % 60,
                n % 60,
                n % 1000
            );
            let text = match (rng.u32(..50), pending.next()) {
                (0, Some(id)) => format!(
                    "{stamp} Error w3wp.12 ClientImplementation.SyncUpdates System.ArgumentException: Item has already been added. Key in dictionary: '8862'  Key being added: '8862'\n\
                     at System.Collections.Hashtable.Insert(Object key, Object nvalue, Boolean add)\n\
                     at Microsoft.UpdateServices.Internal.ClientImplementation.GetSyncInfo(DataAccess dataAccess, Hashtable stateTable, Hashtable deploymentTable, Boolean haveGroupsChanged, Boolean doChunking)\n\
                     at Microsoft.UpdateServices.Internal.ClientImplementation.SyncUpdates(Cookie cookie, SyncUpdateParameters parameters)\n\
                     {stamp} Warning w3wp.12 SoapUtilities.CreateException ThrowException: actor = http://wsus-{s:02}/ClientWebService/client.asmx, ID={id}, ErrorCode=InternalServerError, Message=, Client=?\n"
                ),
                _ => format!(
                    "{stamp} Info w3wp.{} ClientImplementation.GetCookie Cookie issued for client {}\n",
                    rng.u32(1..30),
                    rng.u64(..)
                ),
            };
            out.write_all(text.as_bytes())?;
            written += text.len() as u64;
        }
        out.flush()?;
    }
    println!(
        "{clients} client logs, {servers} server logs, about {mb} MB in {}",
        dir.display()
    );
    Ok(())
}
