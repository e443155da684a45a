//! Authentication as the first step of every `/v1` route.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Authenticates a `/v1` request and puts the [`crate::auth::Caller`] in it.
pub async fn authenticate(gw: &AppState, mut req: Request) -> Result<Request, Response> {
    let peer = super::serve::peer(req.extensions()).map(|a| a.ip());
    let local = super::serve::local(req.extensions()).map(|a| a.ip());
    let caller = match gw.auth.local_caller(peer, local) {
        Some(c) => Ok(c),
        None => gw.auth.authenticate(req.headers(), peer).await,
    };
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(req)
        }
        Err(e) => Err(e.into_response()),
    }
}
