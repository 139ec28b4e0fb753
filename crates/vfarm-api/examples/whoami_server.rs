//! The service's router on two loopback ports over one SQLite state file, for
//! `benches/token_last_used.sh` (wrk drives `GET /api/v1/whoami` with a bearer token):
//!
//! - `after`: the router as it is (a token's `last_used` is written at most once a minute);
//! - `before`: the same router behind a layer that runs the `last_used` UPDATE on every
//!   request, as token verification did before (issue 24).
//!
//! Prints `token …`, `before http://…`, `after http://…`, then serves until killed.
//!
//! Usage: `whoami_server DATA_DIR`

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use vfarm_api::{AppState, PlainListener};

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: whoami_server DATA_DIR");
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    let store = Arc::new(vfarm_store::Store::open(&dir.join("state.db")).expect("state.db"));
    let created =
        vfarm_auth::token::create(&store, "bench", None, None, chrono::Utc::now()).expect("token");
    let state = AppState::new(dir.clone(), store.clone()).expect("state");
    let after = vfarm_api::router(state.clone());
    let id = created.row.id.clone();
    let before = vfarm_api::router(state).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                // What every request cost before: the UPDATE statement, on the blocking pool.
                let _ = tokio::task::spawn_blocking(move || store.touch_token(&id)).await;
                let resp: Response = next.run(req).await;
                resp
            }
        },
    ));
    println!("token {}", created.token);
    let mut tasks = Vec::new();
    for (label, app) in [("before", before), ("after", after)] {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{label} http://{}", tcp.local_addr().expect("addr"));
        tasks.push(tokio::spawn(async move {
            axum::serve(
                PlainListener(tcp),
                app.into_make_service_with_connect_info::<vfarm_api::Peer>(),
            )
            .await
        }));
    }
    use std::io::Write as _;
    std::io::stdout().flush().expect("stdout");
    for t in tasks {
        let _ = t.await;
    }
}
