//! The rows the web service answers with, read into the port's types. A `GenericReadableRow`
//! is a list of untyped cells (`Values/anyType`) whose meaning is its index; the indexes and
//! their sources are given with each reader. A row without a cell the repair needs is refused
//! (not guessed): the server is then not the WSUS 3.0 this build was made for.

use crate::reach::api::soap::Element;
use crate::reach::port::{Approval, Registered, Revision, ServerError};

/// The empty GUID: `parentServerId` for "this server", and a direct child's parent in
/// `ExecuteSPGetAllDownstreamServers`'s rows.
pub(super) const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// One `minimalProperties` row of the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RevisionRow {
    pub(super) revision: Revision,
    pub(super) declined: bool,
    /// The licence agreement's id, when the update still requires its acceptance.
    pub(super) licence: Option<String>,
    pub(super) expired: bool,
}

/// The `minimalProperties` rows of a `CompleteUpdates` answer (`ExecuteSPGetRevisions`,
/// `ExecuteSPGetUpdateById`): each revision (index 1), whether it is latest (24), whether the
/// update is declined (22) (W4 and W3 agree); its publication state (16, 1 = expired: susdb.md
/// 1), the licence's id (20) and whether its acceptance is still required (21) (W4 alone,
/// `UmUpdate`'s constructor).
pub(super) fn revisions(
    response: &Element,
    operation: &str,
) -> Result<Vec<RevisionRow>, ServerError> {
    let Some(rows) = response.path(&[&format!("{operation}Result"), "minimalProperties"]) else {
        return Ok(Vec::new());
    };
    rows.children
        .iter()
        .map(|row| {
            let cells = cells(row);
            let number =
                cell_int(&cells, 1).ok_or_else(|| bad_row(operation, "RevisionNumber (1)"))?;
            let licence = cells
                .get(20)
                .filter(|c| !c.nil)
                .map(|c| c.text.trim().to_ascii_lowercase())
                .filter(|id| !id.is_empty() && id != EMPTY_GUID);
            Ok(RevisionRow {
                revision: Revision {
                    number,
                    latest: cell_bool(&cells, 24).unwrap_or(false),
                },
                declined: cell_bool(&cells, 22).unwrap_or(false),
                licence: licence.filter(|_| cell_bool(&cells, 21).unwrap_or(false)),
                expired: cell_int(&cells, 16) == Some(1),
            })
        })
        .collect()
}

/// `ExecuteSPGetProgramKeys`: each product key (a guid cell) and its description (a text cell).
/// The row layout is not public (the WSDL says `ArrayOfGenericReadableRow`, and `ProgramKey`
/// has a `Key` guid and a `Description`): the first cell typed guid is the key, the first
/// typed string the description. A row without a guid is refused rather than guessed.
pub(super) fn program_keys(response: &Element) -> Result<Vec<(String, String)>, ServerError> {
    let rows = response
        .child("ExecuteSPGetProgramKeysResult")
        .map(|r| r.children.as_slice())
        .unwrap_or_default();
    rows.iter()
        .map(|row| {
            let cells = cells(row);
            let typed = |kind: &str| {
                cells
                    .iter()
                    .find(|c| !c.nil && c.attribute("type").is_some_and(|t| t.ends_with(kind)))
                    .map(|c| c.text.trim().to_string())
            };
            let key = typed(":guid")
                .ok_or_else(|| bad_row("ExecuteSPGetProgramKeys", "guid key"))?
                .to_ascii_lowercase();
            Ok((key, typed(":string").unwrap_or_default()))
        })
        .collect()
}

/// `ExecuteSPGetDeploymentsByUpdate1`: the live approvals of one revision (row: 2 action,
/// 9 RevisionNumber, 10 TargetGroupId).
pub(super) fn approvals(response: &Element, revision: i32) -> Result<Vec<Approval>, ServerError> {
    let Some(rows) = response.child("ExecuteSPGetDeploymentsByUpdate1Result") else {
        return Ok(Vec::new());
    };
    let what = "ExecuteSPGetDeploymentsByUpdate1";
    rows.children
        .iter()
        .map(|row| {
            let cells = cells(row);
            let target_group = cells
                .get(10)
                .filter(|c| !c.nil)
                .map(|c| c.text.trim().to_ascii_uppercase())
                .ok_or_else(|| bad_row(what, "TargetGroupId (10)"))?;
            Ok(Approval {
                // The web service's rows carry a deployment GUID, not SUSDB's number.
                deployment_id: 0,
                revision: cell_int(&cells, 9).unwrap_or(revision),
                // The rows have no TargetGroupTypeID: the Downstream Servers group is the one
                // group of type 1 (susdb.md).
                target_group_type: if target_group == susdb::groups::DOWNSTREAM_SERVERS {
                    susdb::target_group_type::DOWNSTREAM_SERVER
                } else {
                    susdb::target_group_type::COMPUTER
                },
                target_group,
                action: cell_int(&cells, 2).ok_or_else(|| bad_row(what, "action (2)"))?,
            })
        })
        .collect()
}

/// `ExecuteSPGetAllDownstreamServers`' rows: name, id, last sync, parent id, last rollup,
/// version, replica (W3, W2 agree); a direct child's parent is the empty GUID.
pub(super) fn downstream(response: &Element) -> Result<Vec<Registered>, ServerError> {
    let what = "ExecuteSPGetAllDownstreamServers";
    let rows = response
        .child("ExecuteSPGetAllDownstreamServersResult")
        .map(|r| r.children.as_slice())
        .unwrap_or_default();
    let text = |cells: &[&Element], i: usize| {
        cells
            .get(i)
            .filter(|c| !c.nil)
            .map(|c| c.text.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    rows.iter()
        .map(|row| {
            let cells = cells(row);
            Ok(Registered {
                name: text(&cells, 0).ok_or_else(|| bad_row(what, "name (0)"))?,
                id: text(&cells, 1)
                    .ok_or_else(|| bad_row(what, "id (1)"))?
                    .to_ascii_lowercase(),
                parent: text(&cells, 3)
                    .map(|p| p.to_ascii_lowercase())
                    .filter(|p| p != EMPTY_GUID),
                last_sync: text(&cells, 2),
                replica: cell_bool(&cells, 6).unwrap_or(false),
                version: text(&cells, 5).unwrap_or_default(),
            })
        })
        .collect()
}

/// `ExecuteSPGetComputerTargetByName`'s rows (result sets of `GenericReadableRow`s), each row's
/// cells as text. Its row layout is not public: a caller looks for a value in a row rather than
/// trust a column.
pub(super) fn computers(response: &Element) -> Vec<Vec<String>> {
    response
        .child("ExecuteSPGetComputerTargetByNameResult")
        .map(|r| r.children.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|set| set.children.iter())
        .map(|row| {
            cells(row)
                .iter()
                .filter(|c| !c.nil)
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .collect()
}

/// An `UpdateRevisionId`: `UpdateId` and `RevisionNumber`.
pub(super) fn revision_id(name: &str, update: &str, revision: i32) -> Element {
    Element::with(
        name,
        vec![
            Element::text("UpdateId", update.to_ascii_lowercase()),
            Element::text("RevisionNumber", revision.to_string()),
        ],
    )
}

/// A `GenericReadableRow`'s cells (`Values/anyType`).
fn cells(row: &Element) -> Vec<&Element> {
    row.child("Values")
        .map(|v| v.children.iter().collect())
        .unwrap_or_default()
}

fn cell_int(cells: &[&Element], i: usize) -> Option<i32> {
    cells.get(i).filter(|c| !c.nil)?.text.trim().parse().ok()
}

fn cell_bool(cells: &[&Element], i: usize) -> Option<bool> {
    match cells.get(i).filter(|c| !c.nil)?.text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn bad_row(operation: &str, cell: &str) -> ServerError {
    ServerError::permanent(format!(
        "{operation}: a row has no usable {cell}: is this a WSUS 3.0 web service?"
    ))
}
