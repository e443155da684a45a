//! Authentication as the first step of every `/v1` route.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Middleware for the `/v1` routes: authenticates and puts the [`crate::auth::Caller`] in the request.
pub async fn middleware(State(gw): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = super::serve::peer(req.extensions()).map(|a| a.ip());
    let local = super::serve::local(req.extensions()).map(|a| a.ip());
    let caller = match gw.auth.local_caller(peer, local) {
        Some(c) => Ok(c),
        None => gw.auth.authenticate(req.headers(), peer).await,
    };
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
