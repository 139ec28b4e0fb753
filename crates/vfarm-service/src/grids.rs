//! Virtual grids: several instances in roles from one grid file (`vfarm-grid`), brought up
//! in order and torn down together.
//!
//! A grid is recorded (`creating`) before its first member and removed after its last, and
//! every member is recorded as one right after its instance record, so whatever stops
//! half-way — a failure, or a killed service — leaves a row that says what to undo:
//! [`reconcile`] at the service's start rolls a `creating` grid back and finishes a
//! `deleting` one. Members are ordinary instances of the caller made and destroyed through
//! the instance operations (quota, hostname, certificate and network go with them).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use vfarm_core::instance::{parse_duration, State};
use vfarm_driver::{BootProfile, Driver, GuestFile};
use vfarm_grid::{render, Context, Facts, Grid, GridError};
use vfarm_proto::grids::{GridMemberView, GridView};
use vfarm_proto::ErrorCode;
use vfarm_store::grids::GridRow;
use vfarm_store::instances::InstanceRow;
use vfarm_store::{Store, StoreError};

use crate::instances::{self as inst, Admission, Drivers, Net, NewInstance, Shape};
use crate::{Caller, Env, ServiceError};

/// What the HTTP service holds for grids: its environment (the drivers members run on)
/// and the site's rules for new instances.
pub struct GridService {
    pub env: Env,
    pub admission: Admission,
}

/// How `up` goes (the file's own settings, where these are `None`).
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    pub name: Option<String>,
    pub expiry: Option<String>,
    /// Keep what was made on a failure (the grid is then `failed`, for a look inside).
    pub keep_on_failure: bool,
}

/// A grid file's refusal, naming the field in the file.
fn grid_error(e: GridError) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidSpec, e.to_string()).with_field(e.field().to_string())
}

fn store_error(e: StoreError) -> ServiceError {
    ServiceError::from_anyhow(e.into())
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::not_found("grid", name)
}

/// What each role is made from, found before anything is recorded.
struct Made<'d> {
    image: vfarm_image::Image,
    driver: &'d dyn Driver,
    vm: vfarm_driver::VmSetup,
    disk: Option<u64>,
}

/// Bring the grid of `file` up for `caller`: check the file, find (or build) every role's
/// image, record the grid, then make each role's members in stage order, each running
/// before the next role is made, rendering later roles' values from earlier roles' names
/// and addresses. On a failure what was made is destroyed (unless `keep_on_failure`).
pub fn up(
    caller: &Caller,
    env: &Env,
    admission: &Admission,
    file: &str,
    opts: &UpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<GridView, ServiceError> {
    let grid = vfarm_grid::parse(file, opts.name.as_deref()).map_err(grid_error)?;
    let expiry = opts.expiry.clone().or(grid.expiry.clone());
    let expiry_secs = match &expiry {
        Some(e) => Some(
            parse_duration("expiry", e)
                .map_err(|x| ServiceError::bad_request("expiry", format!("`{e}`: {}", x.reason)))?,
        ),
        None => admission.default_expiry_secs,
    };
    // No network named: the grid's own, chosen and made once the grid is recorded.
    let (net, network) = match grid.network.as_deref() {
        None => (None, None),
        Some(n) => {
            let net = Net::Named(n.to_string());
            let network = crate::net::choose(&admission.config, &net)
                .map_err(|e| e.with_field("grid.network"))?
                .map(|n| n.name);
            (Some(net), network)
        }
    };
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let mut drivers = Drivers::new(env);
    // Driver probes first (they need `&mut`), then every role's image and setup: a refusal
    // here changes nothing.
    for r in grid.roles.values() {
        drivers
            .get(r.driver())
            .map_err(|e| ServiceError::from_anyhow(e).with_field("driver"))?;
    }
    let mut made = BTreeMap::new();
    for (name, role) in &grid.roles {
        let field = |what: &str| format!("roles.{name}.{what}");
        let driver = drivers_get(&drivers, role.driver());
        if role.user_data.is_some() {
            return Err(ServiceError::new(
                ErrorCode::Unsupported,
                format!(
                    "{}: cloud-init user-data of one's own is not supported yet; use `command` \
                     and `files`",
                    field("user_data")
                ),
            )
            .with_field(field("user_data")));
        }
        progress(&format!("role {name}: finding the image"));
        let image = role_image(caller, env, name, role, progress)?;
        let vm = inst::vm_setup(
            driver,
            role.profile.as_deref(),
            BootProfile::Full,
            &inst::GuestArgs::default(),
        )
        .map_err(|e| ServiceError::from_anyhow(e).with_field(field("profile")))?;
        if !role.files.is_empty() && driver.kind() == "qemu" && vm.profile == BootProfile::Fast {
            return Err(ServiceError::bad_request(
                "files",
                format!(
                    "{}: files go into a VM through cloud-init: use the full profile",
                    field("files")
                ),
            )
            .with_field(field("files")));
        }
        let disk = role
            .disk
            .as_deref()
            .map(vfarm_core::parse_size)
            .transpose()
            .map_err(|why| ServiceError::bad_request("disk", why).with_field(field("disk")))?;
        made.insert(
            name.clone(),
            Made {
                image,
                driver,
                vm,
                disk,
            },
        );
    }
    // The lock keeps another `up` from taking the same own network between the choice and
    // the record (and, across services, until the network is up and its state says so).
    let lock = match net {
        None => Some(crate::net::grid_lock().map_err(ServiceError::from_anyhow)?),
        Some(_) => None,
    };
    let own = match (&net, &lock) {
        (None, _) => Some(
            crate::net::new_grid_network(&store, &admission.config)
                .map_err(ServiceError::from_anyhow)?,
        ),
        _ => None,
    };
    let network = own.as_ref().map(|c| c.name.clone()).or(network);
    let net = net.unwrap_or_else(|| Net::Grid(network.clone().expect("own network")));
    let t = vfarm_store::now();
    store
        .insert_grid(&GridRow {
            name: grid.name.clone(),
            owner: caller.user.clone(),
            state: "creating".into(),
            network: network.clone(),
            expires: expiry_secs.map(inst::time_after),
            file: file.to_string(),
            created: t.clone(),
            updated: t,
            error: None,
        })
        .map_err(|e| match e {
            StoreError::Conflict { .. } => ServiceError::new(
                ErrorCode::Conflict,
                format!("a grid named `{}` exists already", grid.name),
            )
            .with_field("name"),
            e => store_error(e),
        })?;
    // Recorded first, so a service killed while it is made finds it to take down.
    if let Some(c) = &own {
        progress(&format!(
            "grid {}: network {} ({})",
            grid.name, c.name, c.subnet
        ));
        let made = crate::net::network(c).and_then(|n| Ok(n.up()?));
        drop(lock);
        if let Err(e) = made {
            if let Err(e) = teardown(caller, env, &store, &grid.name) {
                tracing::warn!("cannot tear down grid {}: {e:#}", grid.name);
            }
            return Err(ServiceError::from_anyhow(
                e.context(format!("cannot make the grid's network {}", c.name)),
            ));
        }
    }
    let mut at = String::new();
    let members = make_members(
        caller,
        env,
        &store,
        admission,
        &grid,
        &made,
        &net,
        expiry_secs,
        &mut at,
        progress,
    );
    match members {
        Ok(()) => {
            store
                .set_grid_state(&caller.user, &grid.name, "creating", "up", None)
                .map_err(store_error)?;
            progress(&format!("grid {} up", grid.name));
            show_row(env, &store, &grid.name)
        }
        Err(e) => {
            let mut err = ServiceError::from_anyhow(e);
            err.message = format!("grid {}: {at}: {}", grid.name, err.message);
            if opts.keep_on_failure {
                let _ = store.set_grid_state(
                    &caller.user,
                    &grid.name,
                    "creating",
                    "failed",
                    Some(&err.message),
                );
            } else {
                progress(&format!(
                    "grid {}: failed; tearing down what was made",
                    grid.name
                ));
                if let Err(e) = teardown(caller, env, &store, &grid.name) {
                    tracing::warn!("cannot tear down grid {}: {e:#}", grid.name);
                }
            }
            Err(err)
        }
    }
}

/// The driver made for `kind` (already probed by the caller).
fn drivers_get<'d>(drivers: &'d Drivers<'_>, kind: &str) -> &'d dyn Driver {
    drivers.made(kind).expect("probed before")
}

/// The role's image: by reference, or built from its spec (found at once when it was).
fn role_image(
    caller: &Caller,
    env: &Env,
    name: &str,
    role: &vfarm_grid::Role,
    progress: &mut dyn FnMut(&str),
) -> Result<vfarm_image::Image, ServiceError> {
    let field = |what: &str| format!("roles.{name}.{what}");
    if let Some(reference) = &role.image {
        return inst::usable_image(env, reference)
            .map_err(|e| ServiceError::from_anyhow(e).with_field(field("image")));
    }
    let spec = role
        .image_spec
        .as_ref()
        .expect("checked: image or image_spec");
    let req = spec.resolve().map_err(|e| {
        ServiceError::new(ErrorCode::InvalidSpec, e.to_string()).with_field(field("image_spec"))
    })?;
    let repo = env.images().map_err(ServiceError::from_anyhow)?;
    progress(&format!("role {name}: building (or finding) its image"));
    let outcome = crate::images::build(&repo, caller, &req, &mut |_| {})
        .map_err(|e| ServiceError::from_anyhow(e.into()).with_field(field("image_spec")))?;
    inst::usable_image(env, &outcome.image.id).map_err(ServiceError::from_anyhow)
}

#[allow(clippy::too_many_arguments)]
fn make_members(
    caller: &Caller,
    env: &Env,
    store: &Store,
    admission: &Admission,
    grid: &Grid,
    made: &BTreeMap<String, Made<'_>>,
    net: &Net,
    expiry_secs: Option<u64>,
    at: &mut String,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    for stage in &grid.stages {
        for r in stage {
            let role = &grid.roles[r];
            let m = &made[r];
            let mut f = Facts::default();
            for i in 1..=role.count() {
                let name = vfarm_grid::member_name(&grid.name, r, i);
                *at = format!("role {r}, member {name}");
                progress(&format!(
                    "role {r}: making {name} ({i} of {})",
                    role.count()
                ));
                let ctx = Context {
                    grid: &grid.name,
                    index: i,
                    roles: facts.clone(),
                };
                let row = make_member(
                    caller,
                    env,
                    store,
                    admission,
                    grid,
                    r,
                    i,
                    m,
                    net,
                    expiry_secs,
                    &ctx,
                )?;
                let view = inst::view(store, &row, false)?;
                f.hostnames.push(row.hostname.clone());
                f.addresses
                    .push(view.network.is_some().then_some(view.address).flatten());
            }
            progress(&format!("role {r}: {} running", role.count()));
            facts.insert(r.clone(), f);
        }
    }
    Ok(())
}

/// Render, record, prepare, put files in and start member `i` of role `r`; it must be
/// running afterwards.
#[allow(clippy::too_many_arguments)]
fn make_member(
    caller: &Caller,
    env: &Env,
    store: &Store,
    admission: &Admission,
    grid: &Grid,
    r: &str,
    i: u32,
    m: &Made<'_>,
    net: &Net,
    expiry_secs: Option<u64>,
    ctx: &Context<'_>,
) -> Result<InstanceRow> {
    let role = &grid.roles[r];
    let field = |what: String| format!("roles.{r}.{what}");
    let render = |what: String, text: &str| render(&field(what), text, ctx).map_err(grid_error);
    let hostname = match (&role.hostname, role.hostnames.get(i as usize - 1)) {
        (Some(pattern), _) => Some(render("hostname".into(), pattern)?),
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    };
    let command = role
        .command
        .iter()
        .enumerate()
        .map(|(k, a)| render(format!("command[{k}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_vars = role
        .env
        .iter()
        .map(|(k, v)| Ok(format!("{k}={}", render(format!("env.{k}"), v)?)))
        .collect::<Result<Vec<_>, ServiceError>>()?;
    let mut files = Vec::new();
    for (k, file) in role.files.iter().enumerate() {
        files.push(GuestFile {
            path: file.path.clone(),
            content: render(format!("files[{k}].content"), &file.content)?.into_bytes(),
            mode: file.mode(),
        });
    }
    let mut vm = m.vm.clone();
    if m.driver.kind() == "qemu" {
        vm.files.extend(files.iter().cloned());
    }
    let row = inst::record_instance(
        store,
        admission,
        &env.data_dir,
        m.driver.kind(),
        NewInstance {
            image: m.image.clone(),
            name: Some(vfarm_grid::member_name(&grid.name, r, i)),
            // Seconds, so every member's lease is the grid's within the time it takes.
            expiry: expiry_secs.map(|s| format!("{s}s")),
            shape: Shape {
                cpus: role.cpus,
                memory: role.memory.clone(),
                pids: None,
                hostname,
                env: env_vars,
                net: net.clone(),
                privileged: false,
            },
            command,
            disposable: false,
            vm,
            owner: caller.user.clone(),
            disk: m.disk,
            id: None,
            address: None,
        },
    )?;
    if let Err(e) = store.add_grid_member(&grid.name, r, i as i64, &row.id) {
        // Not a member: nothing would find it to tear it down.
        let _ = remove_instance(caller, env, store, &row.id);
        return Err(e.into());
    }
    // On failure the instance is removed with its holds.
    let row = inst::prepare_recorded(caller, store, m.driver, &row, &env.data_dir)?;
    if m.driver.kind() == "oci" && !files.is_empty() {
        put_files(m.driver, &row.id, &files)?;
    }
    inst::start_instance(caller, store, m.driver, &row)?;
    // Ready: its command started and still runs (an agent answered, for a VM).
    let mut drivers = Drivers::new(env);
    let row = store
        .instance(&row.id)?
        .ok_or_else(|| anyhow::anyhow!("instance {} vanished", row.id))?;
    let row = inst::refresh(caller, store, &mut drivers, row)?;
    if row.state != State::Running.as_str() {
        anyhow::bail!(
            "instance {} is {} right after its start{}: a member's command must keep running",
            row.id,
            row.state,
            row.exit_code
                .map(|c| format!(" (exit status {c})"))
                .unwrap_or_default()
        );
    }
    Ok(row)
}

/// Write files into a prepared oci instance (beside the target, then renamed).
fn put_files(driver: &dyn Driver, id: &str, files: &[GuestFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let target = crate::staging::files_of(driver)?;
    let dir = tempfile::tempdir()?;
    for (k, f) in files.iter().enumerate() {
        let p = dir.path().join(k.to_string());
        std::fs::write(&p, &f.content)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
        target
            .copy_in(id, &p, &f.path)
            .with_context(|| format!("cannot put {} into instance {id}", f.path))?;
    }
    Ok(())
}

/// Destroy instance `id` through the instance operations (certificate revoked, name and
/// address given back); one left `creating` by a dead create is cleaned up as a failed
/// prepare would have. A missing instance is fine.
fn remove_instance(caller: &Caller, env: &Env, store: &Store, id: &str) -> Result<()> {
    let Some(row) = store.instance(id)? else {
        return Ok(());
    };
    let mut drivers = Drivers::new(env);
    let row = inst::refresh(caller, store, &mut drivers, row.clone()).unwrap_or(row);
    let driver = drivers.for_row(store, &row)?;
    if row.state == State::Creating.as_str() {
        let _ = driver.cleanup(id);
        if let Some(spec) = crate::net::spec_of(&row.spec) {
            crate::net::unplug(&env.data_dir, &spec)?;
        }
        inst::revoke_host_certificate(&env.data_dir, id)?;
        store.delete_instance(&caller.user, id)?;
        return Ok(());
    }
    inst::destroy_instance(caller, &env.data_dir, store, driver, &row)
}

/// Destroy every member (last made first), then forget the grid. A member that cannot be
/// destroyed keeps the grid (its error says which).
fn teardown(caller: &Caller, env: &Env, store: &Store, name: &str) -> Result<()> {
    let mut members = store.grid_members(name)?;
    members.reverse();
    let mut failed = Vec::new();
    for m in &members {
        match remove_instance(caller, env, store, &m.instance_id) {
            Ok(()) => store.remove_grid_member(&m.instance_id)?,
            Err(e) => failed.push(format!("{} ({}-{}): {e:#}", m.instance_id, m.role, m.index)),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("cannot destroy member(s) {}", failed.join("; "));
    }
    // The grid's own network goes after its members; what is not up here has nothing left.
    let own = store
        .grid(name)?
        .and_then(|g| g.network)
        .filter(|n| vfarm_auth::config::is_grid_network(n));
    if let Some(n) = own {
        if let Some(net) = vfarm_net::Network::load(&vfarm_net::state_dir(), &n)? {
            net.down()
                .with_context(|| format!("cannot take the grid's network {n} down"))?;
        }
    }
    store.delete_grid(&caller.user, name)?;
    Ok(())
}

/// The caller's grid `name` (another owner's is reported as missing).
fn find(caller: &Caller, store: &Store, name: &str) -> Result<GridRow, ServiceError> {
    match store.grid(name).map_err(store_error)? {
        Some(g) if caller.may_access(&g.owner) => Ok(g),
        _ => Err(not_found(name)),
    }
}

/// Tear the grid down: `deleting`, every member destroyed, the grid removed. A grid left
/// `deleting` (a failed or interrupted teardown) is torn down again.
pub fn down(caller: &Caller, env: &Env, name: &str) -> Result<(), ServiceError> {
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let g = find(caller, &store, name)?;
    match g.state.as_str() {
        "up" | "failed" => {
            if !store
                .set_grid_state(&caller.user, name, &g.state, "deleting", None)
                .map_err(store_error)?
            {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!("grid `{name}` changed meanwhile; try again"),
                ));
            }
        }
        "deleting" => {}
        s => {
            return Err(ServiceError::new(
                ErrorCode::IllegalState,
                format!("grid `{name}` is {s}: wait until it is up or failed"),
            ))
        }
    }
    teardown(caller, env, &store, name).map_err(|e| {
        let _ = store.set_grid_state(
            &caller.user,
            name,
            "deleting",
            "failed",
            Some(&format!("{e:#}")),
        );
        ServiceError::from_anyhow(e)
    })
}

/// The caller's grids (admins: all).
pub fn list(caller: &Caller, env: &Env) -> Result<Vec<GridView>, ServiceError> {
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let legacy = vfarm_auth::identity::legacy_owner_of(&caller.user);
    let mine: Vec<&str> = std::iter::once(caller.user.as_str())
        .chain(legacy.as_deref())
        .collect();
    let rows = store
        .grids((!caller.admin).then_some(mine.as_slice()))
        .map_err(store_error)?;
    rows.iter().map(|g| view(env, &store, g)).collect()
}

pub fn show(caller: &Caller, env: &Env, name: &str) -> Result<GridView, ServiceError> {
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let g = find(caller, &store, name)?;
    view(env, &store, &g)
}

fn show_row(env: &Env, store: &Store, name: &str) -> Result<GridView, ServiceError> {
    let g = store
        .grid(name)
        .map_err(store_error)?
        .ok_or_else(|| not_found(name))?;
    view(env, store, &g)
}

fn view(env: &Env, store: &Store, g: &GridRow) -> Result<GridView, ServiceError> {
    let _ = env;
    let stages = vfarm_grid::parse(&g.file, Some(&g.name))
        .map(|p| p.stages)
        .unwrap_or_default();
    let mut members = Vec::new();
    for m in store.grid_members(&g.name).map_err(store_error)? {
        let row = store.instance(&m.instance_id).map_err(store_error)?;
        let v = match &row {
            Some(r) => Some(inst::view(store, r, false).map_err(ServiceError::from_anyhow)?),
            None => None,
        };
        members.push(GridMemberView {
            role: m.role,
            index: m.index as u32,
            instance_id: m.instance_id,
            name: v.as_ref().and_then(|v| v.name.clone()),
            hostname: row.as_ref().map(|r| r.hostname.clone()),
            state: v.as_ref().map_or("gone".into(), |v| v.state.clone()),
            address: v.as_ref().and_then(|v| v.address.clone()),
            ssh_command: v.and_then(|v| v.ssh_command),
        });
    }
    // In stage order, then by index.
    let rank = |role: &str| stages.iter().position(|s| s.iter().any(|r| r == role));
    members
        .sort_by(|a, b| (rank(&a.role), &a.role, a.index).cmp(&(rank(&b.role), &b.role, b.index)));
    Ok(GridView {
        name: g.name.clone(),
        owner: g.owner.clone(),
        state: g.state.clone(),
        network: g.network.clone(),
        expires: g.expires.clone(),
        created: g.created.clone(),
        error: g.error.clone(),
        stages,
        members,
    })
}

/// Move the grid's expiry, and every member's, `by` later (`2d`). A grid without one gets
/// one `by` from now, like an instance.
pub fn extend(caller: &Caller, env: &Env, name: &str, by: &str) -> Result<GridView, ServiceError> {
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let g = find(caller, &store, name)?;
    if g.state != "up" {
        return Err(ServiceError::new(
            ErrorCode::IllegalState,
            format!("grid `{name}` is {}: only an up grid is extended", g.state),
        ));
    }
    for m in store.grid_members(name).map_err(store_error)? {
        if let Some(row) = store.instance(&m.instance_id).map_err(store_error)? {
            inst::extend_instance(caller, &store, &row, by).map_err(ServiceError::from_anyhow)?;
        }
    }
    let secs =
        parse_duration("by", by).map_err(|e| ServiceError::bad_request("by", e.to_string()))?;
    let from = g
        .expires
        .as_deref()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .filter(|t| *t > chrono::Utc::now())
        .unwrap_or_else(chrono::Utc::now);
    let until = (from + chrono::Duration::seconds(secs as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    store
        .set_grid_expiry(&caller.user, name, &until)
        .map_err(store_error)?;
    show(caller, env, name)
}

/// What start-up did to grids a previous service left half made or half torn down.
#[derive(Debug, Default, serde::Serialize)]
pub struct Settled {
    /// `creating`: rolled back (members destroyed, grid gone).
    pub rolled_back: Vec<String>,
    /// `deleting`: torn down.
    pub finished: Vec<String>,
}

/// The grid agent's name in the event log.
pub const GRIDS: &str = "vfarm-grids";

/// Settle grids a killed service left `creating` (roll back: nothing half) or `deleting`
/// (finish). Runs after instance reconciliation, so dead creates are already gone.
pub fn reconcile(env: &Env) -> Result<Settled> {
    let caller = &Caller::agent(GRIDS);
    let store = env.store()?;
    let mut out = Settled::default();
    for g in store.grids_in(&["creating", "deleting"])? {
        if g.state == "creating"
            && !store.set_grid_state(
                GRIDS,
                &g.name,
                "creating",
                "deleting",
                Some("the service stopped while it was made"),
            )?
        {
            continue;
        }
        match teardown(caller, env, &store, &g.name) {
            Ok(()) if g.state == "creating" => out.rolled_back.push(g.name),
            Ok(()) => out.finished.push(g.name),
            Err(e) => {
                tracing::warn!("cannot settle grid {}: {e:#}", g.name);
                let _ = store.set_grid_state(
                    GRIDS,
                    &g.name,
                    "deleting",
                    "failed",
                    Some(&format!("{e:#}")),
                );
            }
        }
    }
    Ok(out)
}

/// Tear down every grid whose expiry has passed, as a whole. Returns their names. The
/// instance reaper leaves grid members to this.
pub fn reap_expired(env: &Env) -> Result<Vec<String>> {
    let caller = &Caller::agent(inst::REAPER);
    let store = env.store()?;
    let mut reaped = Vec::new();
    for g in store.expired_grids(&vfarm_store::now())? {
        if g.state == "creating" {
            continue;
        }
        match down(caller, env, &g.name) {
            Ok(()) => {
                let detail = serde_json::json!({ "owner": g.owner, "expires": g.expires });
                if let Err(e) =
                    store.audit(inst::REAPER, "service", "grid.reap", &g.name, "ok", &detail)
                {
                    tracing::warn!("cannot audit the reaping of grid {}: {e}", g.name);
                }
                reaped.push(g.name);
            }
            Err(e) => tracing::warn!("cannot reap grid {}: {e}", g.name),
        }
    }
    Ok(reaped)
}

/// Read a grid file for the CLI, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, ServiceError> {
    std::fs::read_to_string(path).map_err(|e| {
        ServiceError::new(
            ErrorCode::InvalidArgument,
            format!("cannot read grid file {}: {e}", path.display()),
        )
        .with_field("file")
    })
}
