//! The pooled service README.md shows: an author's add-ons through the cache.
use axum::{extract::Path, extract::State, http::StatusCode, response::Result, routing::get, Json};
use cachemachine::deadpool_postgres::{Config, Pool, Runtime};
use cachemachine::{tokio_postgres::NoTls, CachingPool, QueryCache};
type Db = State<CachingPool<Pool>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = Some("postgres://postgres@127.0.0.1/app".to_owned());
    let pool = Config { url, ..Config::default() }.create_pool(Some(Runtime::Tokio1), NoTls)?;
    let db = CachingPool::new(pool.clone(), QueryCache::builder().build(&pool).await?);
    let app = axum::Router::new().route("/authors/{id}/addons", get(addons)).with_state(db);
    Ok(axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?)
}

async fn addons(State(db): Db, Path(id): Path<i32>) -> Result<Json<Vec<String>>> {
    let sql = "SELECT name FROM addons WHERE author_id = $1 ORDER BY id";
    let names = db.query_as(sql, &[&id], |row| row.try_get("name")).await;
    Ok(Json(names.map_err(|_| StatusCode::BAD_GATEWAY)?))
}
