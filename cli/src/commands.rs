//! The subcommands.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context as _;
use futures_util::StreamExt;
use secureev_dbus::{
    CompletedStream, OperationCompletedStream, Ota1Proxy, Progress, State, BUS_NAME, INTERFACE,
    OBJECT_PATH,
};
use serde_json::json;
use zbus::fdo::{DBusProxy, PropertiesChangedStream, PropertiesProxy};
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedValue, Value};
use zbus::Connection;

use crate::exit::{self, fail};
use crate::output::{self, ProgressView};
use crate::{Cli, Command};

/// Runs one command; returns the exit status.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let conn = connect(cli.bus.as_deref()).await?;
    ensure_daemon(&conn, cli.bus.is_some()).await?;
    // Uncached: every command reads fresh values once; `watch` uses the signals.
    let proxy = Ota1Proxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let json = cli.json;
    let timeout = std::time::Duration::from_secs(cli.timeout);
    match cli.command {
        Command::Status => status(&proxy, json).await,
        Command::Check { force, wait } => {
            let mut options: HashMap<&str, Value<'_>> = HashMap::new();
            if force {
                options.insert("force", Value::from(true));
            }
            let follow = if wait {
                Some(Follow::new(&conn, &proxy).await?)
            } else {
                None
            };
            let op = proxy.check_for_updates(options).await?;
            started(json, op, "check started");
            match follow {
                Some(f) => f.run(&proxy, json, Some(op), timeout).await,
                None => Ok(exit::OK),
            }
        }
        Command::Install {
            yes,
            id,
            wait,
            when_ready,
            transaction_id,
        } => {
            let mut options = HashMap::new();
            if when_ready {
                options.insert("when-ready", Value::from(true));
            }
            if let Some(t) = transaction_id {
                options.insert("transaction-id", Value::from(t));
            }
            install(
                &conn,
                &proxy,
                json,
                (yes, id),
                options,
                wait.then_some(timeout),
            )
            .await
        }
        Command::Cancel => {
            proxy.cancel().await?;
            done(json, "cancel requested");
            Ok(exit::OK)
        }
        Command::Postpone { secs } => {
            proxy.postpone(secs).await?;
            done(json, &format!("pending update postponed by {secs} s"));
            Ok(exit::OK)
        }
        Command::Watch => {
            Follow::new(&conn, &proxy)
                .await?
                .run(&proxy, json, None, timeout)
                .await
        }
        Command::History => history(&proxy, json).await,
        Command::Ecus => ecus(&proxy, json).await,
        Command::Provision {
            url,
            vin,
            token,
            wait,
        } => {
            let mut options: HashMap<&str, Value<'_>> = HashMap::new();
            if let Some(v) = &vin {
                options.insert("vin", Value::from(v.as_str()));
            }
            if let Some(t) = &token {
                options.insert("token", Value::from(t.as_str()));
            }
            let follow = if wait {
                Some(Follow::new(&conn, &proxy).await?)
            } else {
                None
            };
            let op = proxy.provision(&url, options).await?;
            started(json, op, "provisioning started");
            match follow {
                Some(f) => f.run(&proxy, json, Some(op), timeout).await,
                None => Ok(exit::OK),
            }
        }
    }
}

async fn connect(address: Option<&str>) -> anyhow::Result<Connection> {
    let (builder, what) = match address {
        Some(a) => (zbus::connection::Builder::address(a), format!("bus {a}")),
        None => (zbus::connection::Builder::system(), "the system bus".into()),
    };
    let built = match builder {
        Ok(b) => b.build().await,
        Err(e) => Err(e),
    };
    built.map_err(|e| fail(exit::NO_BUS, format!("cannot connect to {what}: {e}")))
}

/// Fails with [`exit::NOT_RUNNING`] when nobody owns the name and the bus cannot
/// start the daemon by activation.
async fn ensure_daemon(conn: &Connection, custom_bus: bool) -> anyhow::Result<()> {
    let dbus = DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::try_from(BUS_NAME)?;
    if dbus.name_has_owner(name).await? {
        return Ok(());
    }
    let activatable = dbus.list_activatable_names().await.unwrap_or_default();
    if activatable.iter().any(|n| n.as_str() == BUS_NAME) {
        return Ok(());
    }
    let hint = if custom_bus {
        ""
    } else {
        "; start it with `systemctl start secureev-otad`"
    };
    Err(fail(
        exit::NOT_RUNNING,
        format!(
            "the SecureEV-OTA daemon is not running ({BUS_NAME} has no owner on the bus){hint}"
        ),
    ))
}

/// An operation was accepted: its id, for `--wait` and scripts.
fn started(json: bool, op: u64, message: &str) {
    if json {
        println!(
            "{}",
            json!({ "ok": true, "operation-id": op, "message": message })
        );
    } else {
        println!("{message} (operation {op})");
    }
}

fn done(json: bool, message: &str) {
    if json {
        println!("{}", json!({ "ok": true, "message": message }));
    } else {
        println!("{message}");
    }
}

async fn status(proxy: &Ota1Proxy<'_>, json: bool) -> anyhow::Result<u8> {
    let state = proxy.state().await?;
    let progress = proxy.progress().await?;
    let pending_id = proxy.pending_update_id().await?;
    let pending = proxy.pending_updates().await?;
    let ecus = proxy.ecus().await?;
    let last_check = proxy.last_check().await?;
    let last_error = proxy.last_error().await?;
    let last_error_code = proxy.last_error_code().await?;
    let preconditions = proxy.preconditions().await?;
    let postponed_until = proxy.postponed_until().await?;
    let deferred = proxy.deferred_install().await?;
    if json {
        let v = json!({
            "state": state,
            "progress": output::progress_json(&progress),
            "pending-update-id": pending_id,
            "pending-updates": pending.iter().map(output::pending_json).collect::<Vec<_>>(),
            "ecus": ecus.iter().map(output::ecu_json).collect::<Vec<_>>(),
            "last-check": last_check,
            "last-error": last_error,
            "last-error-code": last_error_code,
            "preconditions": preconditions.iter().map(output::precondition_json).collect::<Vec<_>>(),
            "postponed-until": postponed_until,
            "deferred-install": deferred,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    println!("State:       {state}");
    if state.parse::<State>().is_ok_and(State::is_busy) {
        let mut view = ProgressView::new();
        print!("Progress:    ");
        view.show(&progress.phase, &progress);
        view.finish();
    }
    println!("Last check:  {}", output::time(last_check));
    if last_error_code != 0 || !last_error.is_empty() {
        println!(
            "Last error:  {} {last_error}",
            output::code(last_error_code)
        );
    }
    for p in &preconditions {
        let holds = if p.satisfied { "yes" } else { "no" };
        println!("Precondition {}: {holds} {}", p.name, p.reason);
    }
    if pending.is_empty() {
        println!("No update pending.");
    } else {
        output::print_plan(&pending_id, &pending, &ecus);
        if postponed_until > 0 {
            println!("Postponed until {}", output::time(postponed_until));
        }
        if deferred > 0 {
            println!("Install deferred until the preconditions hold (operation {deferred})");
        }
    }
    Ok(exit::OK)
}

async fn install(
    conn: &Connection,
    proxy: &Ota1Proxy<'_>,
    json: bool,
    (yes, id): (bool, Option<String>),
    options: HashMap<&str, Value<'_>>,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<u8> {
    let pending_id = proxy.pending_update_id().await?;
    let pending = proxy.pending_updates().await?;
    if pending_id.is_empty() {
        return Err(fail(
            secureev_dbus::ErrorCode::NoSuchUpdate.as_u32() as u8,
            "no update is pending; run `secureevctl check` first",
        ));
    }
    // With --id the consent is for that id, whatever is pending now; the daemon
    // refuses it if it is no longer the pending update.
    let update_id = id.unwrap_or_else(|| pending_id.clone());
    if json {
        println!(
            "{}",
            json!({
                "pending-update-id": pending_id,
                "pending-updates": pending.iter().map(output::pending_json).collect::<Vec<_>>(),
            })
        );
    } else {
        let ecus = proxy.ecus().await?;
        output::print_plan(&pending_id, &pending, &ecus);
    }
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(fail(
                exit::DECLINED,
                "not confirmed: stdin is not a terminal; pass --yes to install without asking",
            ));
        }
        print!("Install this update? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(fail(exit::DECLINED, "not confirmed; nothing installed"));
        }
    }
    let follow = match wait {
        Some(t) => Some((Follow::new(conn, proxy).await?, t)),
        None => None,
    };
    let op = proxy
        .install(&update_id, options)
        .await
        .with_context(|| format!("install of update {update_id} refused"))?;
    started(json, op, &format!("install of update {update_id} started"));
    match follow {
        Some((f, timeout)) => f.run(proxy, json, Some(op), timeout).await,
        None => Ok(exit::OK),
    }
}

async fn history(proxy: &Ota1Proxy<'_>, json: bool) -> anyhow::Result<u8> {
    let entries = proxy.get_history().await?;
    if json {
        let v: Vec<_> = entries.iter().map(output::history_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        println!("No history.");
    }
    for e in &entries {
        println!(
            "{}  {:<10} {:<26} {:<12} {}",
            output::time(e.time),
            e.action,
            output::code(e.code),
            if e.ecu_serial.is_empty() {
                String::new()
            } else {
                output::version_label(&e.version, e.release_counter)
            },
            e.message
        );
    }
    Ok(exit::OK)
}

async fn ecus(proxy: &Ota1Proxy<'_>, json: bool) -> anyhow::Result<u8> {
    let ecus = proxy.ecus().await?;
    if json {
        let v: Vec<_> = ecus.iter().map(output::ecu_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    println!(
        "{:<14} {:<16} {:<16} {:<10} {:<9} {:<12} LAST-CONTACT",
        "SERIAL", "HARDWARE-ID", "VERSION", "ROLE", "LINK", "STATUS"
    );
    for e in &ecus {
        let role = if e.primary { "primary" } else { "secondary" };
        let link = if e.primary { "-" } else { e.transport.as_str() };
        let contact = if e.primary {
            "-".to_owned()
        } else {
            output::time(e.last_contact)
        };
        println!(
            "{:<14} {:<16} {:<16} {:<10} {:<9} {:<12} {contact}",
            e.serial,
            e.hardware_id,
            output::version_label(&e.installed_version, e.installed_release_counter),
            role,
            link,
            e.status
        );
    }
    Ok(exit::OK)
}

/// Subscriptions made before the call they follow, so no signal is missed.
struct Follow {
    changes: PropertiesChangedStream,
    completed: CompletedStream,
    operations: OperationCompletedStream,
    owner: zbus::fdo::NameOwnerChangedStream,
}

impl Follow {
    async fn new(conn: &Connection, proxy: &Ota1Proxy<'_>) -> anyhow::Result<Self> {
        let props = PropertiesProxy::builder(conn)
            .destination(BUS_NAME)?
            .path(OBJECT_PATH)?
            .build()
            .await?;
        let owner = DBusProxy::new(conn)
            .await?
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await?;
        Ok(Follow {
            changes: props.receive_properties_changed().await?,
            completed: proxy.receive_completed().await?,
            operations: proxy.receive_operation_completed().await?,
            owner,
        })
    }

    /// Shows progress until operation `op` ends (its `OperationCompleted`;
    /// other operations' outcomes are not its own), or without `op` until the
    /// next `Completed`; returns its code as exit status. Gives up after
    /// `timeout` with [`exit::TIMED_OUT`].
    async fn run(
        mut self,
        proxy: &Ota1Proxy<'_>,
        json: bool,
        op: Option<u64>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut state = proxy.state().await?;
        let mut progress = proxy.progress().await?;
        let mut view = ProgressView::new();
        if json {
            println!("{}", json!({ "event": "state", "state": state }));
        } else {
            view.show(&state, &progress);
        }
        loop {
            tokio::select! {
                // In bus order: the daemon sends the property changes of an
                // operation before its Completed, and each stream gets its
                // messages in arrival order, but an unbiased select may take
                // Completed first and drop the last changes (the final state).
                biased;
                change = self.changes.next() => {
                    let Some(change) = change else { break };
                    let args = change.args()?;
                    if args.interface_name.as_str() != INTERFACE {
                        continue;
                    }
                    let props = &args.changed_properties;
                    if let Some(v) = props.get("State") {
                        let s: String = v.try_to_owned()?.try_into()?;
                        if s != state {
                            state = s;
                            if json {
                                println!("{}", json!({ "event": "state", "state": state }));
                            }
                        }
                    }
                    if let Some(v) = props.get("Progress") {
                        let owned: OwnedValue = v.try_to_owned()?;
                        progress = Progress::try_from(owned)?;
                        if json {
                            println!(
                                "{}",
                                json!({ "event": "progress", "progress": output::progress_json(&progress) })
                            );
                        }
                    }
                    if !json {
                        view.show(&state, &progress);
                    }
                }
                completed = self.completed.next(), if op.is_none() => {
                    let Some(completed) = completed else { break };
                    let args = completed.args()?;
                    view.finish();
                    return Ok(outcome(json, None, args.code, &args.message));
                }
                ended = self.operations.next(), if op.is_some() => {
                    let Some(ended) = ended else { break };
                    let args = ended.args()?;
                    if Some(args.id) != op {
                        continue;
                    }
                    view.finish();
                    return Ok(outcome(json, Some((args.id, &args.kind)), args.code, &args.message));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    view.finish();
                    let what = match op {
                        Some(id) => format!("operation {id}"),
                        None => "the operation".to_owned(),
                    };
                    return Err(fail(
                        exit::TIMED_OUT,
                        format!("{what} did not end within {} s (--timeout)", timeout.as_secs()),
                    ));
                }
                owner = self.owner.next() => {
                    let Some(owner) = owner else { break };
                    if owner.args()?.new_owner().is_none() {
                        view.finish();
                        return Err(fail(
                            exit::NOT_RUNNING,
                            "the daemon went away before the operation completed",
                        ));
                    }
                }
            }
        }
        view.finish();
        Err(fail(exit::NOT_RUNNING, "lost the connection to the bus"))
    }
}

/// Print an operation's outcome; its code as exit status.
fn outcome(json: bool, op: Option<(u64, &str)>, code: u32, message: &str) -> u8 {
    if json {
        let mut v = json!({ "event": "completed", "code": code, "message": message });
        if let Some((id, kind)) = op {
            v["operation-id"] = json!(id);
            v["kind"] = json!(kind);
        }
        println!("{v}");
    } else if code == 0 {
        println!("Completed: {message}");
    } else {
        println!("Failed {}: {message}", output::code(code));
    }
    exit::completed_code(code)
}
