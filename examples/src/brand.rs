//! `brand_with_logo`: create a brand, upload its logo, set the brand's logo, index the brand for
//! search. The logo goes to a real [`FileStore`] (the local-disk provider), so rolling back
//! really deletes a file.
//!
//! ```text
//!  create-brand ─► upload-brand-logo ─► set-brand-logo ─► index-brand (retried twice)
//!   ↩ delete it,     ↩ delete the file    ↩ restore the
//!     if created                            previous logo
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use bytes::Bytes;
use gorgon_file::{FileKey, FileStore, LocalFileStore, LocalOptions};
use gorgon_workflows::{
    App, Error, Services, Step, StepContext, StepFailure, StepResponse, StepResult,
    TransactionState, Workflow,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{compensated, ran, run_as};

/// The workflow's name.
pub const WORKFLOW: &str = "brand-with-logo";

/// A brand to create (or, when its handle exists, to give a new logo) and its logo.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrandInput {
    /// The brand's unique handle, e.g. `acme`.
    pub handle: String,
    /// Its display name.
    pub name: String,
    /// The logo's file name, e.g. `logo.png`.
    pub logo_file_name: String,
    /// The logo's content.
    pub logo: Vec<u8>,
}

/// A brand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brand {
    /// Its id.
    pub id: u64,
    /// Its unique handle.
    pub handle: String,
    /// Its display name.
    pub name: String,
    /// The file id of its logo (`public/brands/...`), if any.
    pub logo: Option<String>,
}

/// The brand module's service: brands by id, in memory.
#[derive(Debug, Default)]
pub struct Brands {
    state: Mutex<(u64, BTreeMap<u64, Brand>)>,
}

impl Brands {
    /// The brand with this handle, and whether this call created it.
    pub fn create_or_get(&self, handle: &str, name: &str) -> (Brand, bool) {
        let mut state = self.state.lock();
        if let Some(brand) = state.1.values().find(|b| b.handle == handle) {
            return (brand.clone(), false);
        }
        state.0 += 1;
        let brand = Brand {
            id: state.0,
            handle: handle.to_string(),
            name: name.to_string(),
            logo: None,
        };
        state.1.insert(brand.id, brand.clone());
        (brand, true)
    }

    /// Deletes a brand (nothing happens when it does not exist).
    pub fn delete(&self, id: u64) {
        self.state.lock().1.remove(&id);
    }

    /// Sets a brand's logo; returns the brand before the change, `None` when it does not exist.
    pub fn set_logo(&self, id: u64, logo: Option<String>) -> Option<(Brand, Brand)> {
        let mut state = self.state.lock();
        let brand = state.1.get_mut(&id)?;
        let before = brand.clone();
        brand.logo = logo;
        Some((before, brand.clone()))
    }

    /// The brands, by id.
    pub fn all(&self) -> Vec<Brand> {
        self.state.lock().1.values().cloned().collect()
    }
}

/// A search index of brands, in memory; it can be taken down to make indexing fail.
#[derive(Debug, Default)]
pub struct SearchIndex {
    down: Mutex<bool>,
    calls: Mutex<u32>,
    documents: Mutex<BTreeMap<u64, Brand>>,
}

impl SearchIndex {
    /// Takes the index down (`true`) or brings it back up.
    pub fn set_down(&self, down: bool) {
        *self.down.lock() = down;
    }

    /// Indexes a brand.
    pub fn index(&self, brand: &Brand) -> Result<(), String> {
        *self.calls.lock() += 1;
        if *self.down.lock() {
            return Err("search index unavailable".to_string());
        }
        self.documents.lock().insert(brand.id, brand.clone());
        Ok(())
    }

    /// How many times [`index`](Self::index) was called.
    pub fn calls(&self) -> u32 {
        *self.calls.lock()
    }

    /// The indexed brands, by id.
    pub fn documents(&self) -> Vec<Brand> {
        self.documents.lock().values().cloned().collect()
    }
}

/// A stored logo: its file id and public URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logo {
    /// The file id, `public/brands/<handle>/<run>-<file name>`.
    pub file: String,
    /// Where browsers fetch it.
    pub url: Option<String>,
}

/// What `set-brand-logo` saves to undo itself: the brand and its logo before the change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousLogo {
    brand_id: u64,
    logo: Option<String>,
}

async fn create_brand(input: BrandInput, ctx: StepContext) -> StepResult<Brand, Option<u64>> {
    let (brand, created) = ctx
        .service::<Brands>()?
        .create_or_get(&input.handle, &input.name);
    let what = if created { "created" } else { "exists" };
    ran(&ctx, format!("brand #{} {} {what}", brand.id, brand.handle));
    // Only a brand this run created is deleted on rollback.
    let created = created.then_some(brand.id);
    Ok(StepResponse::new(brand).with_compensation(created))
}

async fn delete_brand(created: Option<Option<u64>>, ctx: StepContext) -> Result<(), StepFailure> {
    match created.flatten() {
        Some(id) => {
            ctx.service::<Brands>()?.delete(id);
            compensated(&ctx, format!("deleted brand #{id}"));
        }
        None => compensated(&ctx, "brand existed before: kept"),
    }
    Ok(())
}

async fn upload_logo((brand, input): (Brand, BrandInput), ctx: StepContext) -> StepResult<Logo> {
    // One file per run, so a new logo never overwrites the one in use.
    let path = format!(
        "brands/{}/{}-{}",
        brand.handle,
        ctx.transaction_id(),
        input.logo_file_name
    );
    let key = FileKey::public(&path).map_err(StepFailure::from)?;
    let stored = ctx
        .service::<dyn FileStore>()?
        .upload(&key, Bytes::from(input.logo), Some("image/png"))
        .await?;
    ran(&ctx, format!("uploaded {key} ({} bytes)", stored.size));
    Ok(StepResponse::new(Logo {
        file: key.to_string(),
        url: stored.public_url,
    }))
}

async fn delete_logo(logo: Option<Logo>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(logo) = logo {
        let key = FileKey::parse(&logo.file)?;
        ctx.service::<dyn FileStore>()?.delete(&key).await?;
        compensated(&ctx, format!("deleted file {key}"));
    }
    Ok(())
}

async fn set_logo(
    (brand, logo): (Brand, Logo),
    ctx: StepContext,
) -> StepResult<Brand, PreviousLogo> {
    let (before, after) = ctx
        .service::<Brands>()?
        .set_logo(brand.id, Some(logo.file.clone()))
        .ok_or_else(|| StepFailure::permanent(format!("brand #{} is gone", brand.id)))?;
    ran(
        &ctx,
        format!(
            "brand #{} logo {:?} -> {}",
            brand.id, before.logo, logo.file
        ),
    );
    Ok(StepResponse::new(after).with_compensation(PreviousLogo {
        brand_id: brand.id,
        logo: before.logo,
    }))
}

async fn restore_logo(previous: Option<PreviousLogo>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(previous) = previous {
        ctx.service::<Brands>()?
            .set_logo(previous.brand_id, previous.logo.clone());
        compensated(
            &ctx,
            format!(
                "brand #{} logo restored to {:?}",
                previous.brand_id, previous.logo
            ),
        );
    }
    Ok(())
}

async fn index_brand(brand: Brand, ctx: StepContext) -> StepResult<Brand> {
    match ctx.service::<SearchIndex>()?.index(&brand) {
        Ok(()) => {
            ran(&ctx, format!("brand #{} indexed", brand.id));
            Ok(StepResponse::new(brand))
        }
        Err(error) => {
            // A temporary failure: retried while `max_retries` allows.
            ran(&ctx, format!("FAILED: {error}"));
            Err(StepFailure::new(error))
        }
    }
}

/// The brand workflow: `BrandInput` in, the brand with its new logo out.
pub fn workflow() -> Result<Workflow<BrandInput, Brand>, Error> {
    let create_brand = Step::new("create-brand", create_brand)
        .compensate(delete_brand)
        .requires::<Brands>();
    let upload_logo = Step::new("upload-brand-logo", upload_logo)
        .compensate(delete_logo)
        .requires::<dyn FileStore>();
    let set_logo = Step::new("set-brand-logo", set_logo)
        .compensate(restore_logo)
        .requires::<Brands>();
    let index_brand = Step::new("index-brand", index_brand)
        .max_retries(2)
        .requires::<SearchIndex>();
    Workflow::define(WORKFLOW, |b, input| {
        let brand = b.step(&create_brand, input);
        let logo = b.step(&upload_logo, (brand, input));
        let brand = b.step(&set_logo, (brand, logo));
        b.step(&index_brand, brand)
    })
}

/// The example's services: brands, the search index and the local file store under `root`.
pub struct BrandServices {
    /// The brands.
    pub brands: Arc<Brands>,
    /// The search index.
    pub search: Arc<SearchIndex>,
    /// The files, on local disk.
    pub files: Arc<dyn FileStore>,
    /// The folder holding the files.
    pub root: PathBuf,
}

impl BrandServices {
    /// The services, with the files under `root`.
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let files = LocalFileStore::new(LocalOptions {
            root: root.to_path_buf(),
            signing_secret: Some("example-signing-secret".into()),
            ..LocalOptions::default()
        })?;
        Ok(BrandServices {
            brands: Arc::default(),
            search: Arc::default(),
            files: Arc::new(files),
            root: root.to_path_buf(),
        })
    }

    /// The registry the steps resolve them from, by type (the file store as `dyn FileStore`).
    pub fn registry(&self) -> Services {
        Services::new()
            .with(self.brands.clone())
            .with(self.search.clone())
            .with(self.files.clone())
    }

    /// The public files on disk, as file ids (`public/...`), sorted.
    pub fn files_on_disk(&self) -> anyhow::Result<Vec<String>> {
        let mut files = Vec::new();
        let mut folders = vec![self.root.join("public")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).with_context(|| folder.display().to_string())? {
                let path = entry?.path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let relative = path.strip_prefix(&self.root)?;
                    files.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        files.sort();
        Ok(files)
    }

    fn print(&self) -> anyhow::Result<()> {
        println!("  state: brands  {:?}", self.brands.all());
        println!("         indexed {:?}", self.search.documents());
        println!("         files   {:?}", self.files_on_disk()?);
        Ok(())
    }
}

/// A logo's bytes (a PNG signature and a marker).
pub fn logo_bytes(marker: &str) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(marker.as_bytes());
    bytes
}

fn input(handle: &str, name: &str, marker: &str) -> BrandInput {
    BrandInput {
        handle: handle.into(),
        name: name.into(),
        logo_file_name: "logo.png".into(),
        logo: logo_bytes(marker),
    }
}

fn reverted_at_index(error: &Error) -> bool {
    matches!(
        error,
        Error::Failed {
            state: TransactionState::Reverted,
            ..
        }
    ) && error
        .errors()
        .first()
        .is_some_and(|e| e.action == "index-brand")
}

/// Runs the example: a brand created with its logo; the same brand given a new logo while the
/// search index is down (the old logo is restored and the new file deleted); a new brand while
/// the index is down (the brand and its file are removed). Fails if an end state is wrong.
pub async fn demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let services = BrandServices::new(dir.path())?;
    let app = App::new(services.registry());
    let workflow = workflow()?;
    app.register(&workflow)?;
    println!("files are stored under {}", dir.path().display());

    println!("== run 1: create brand acme with its logo");
    let acme = run_as(&app, &workflow, "run-1", input("acme", "Acme", "v1")).await?;
    println!("  result: {acme:?}");
    services.print()?;
    let first_logo = acme.logo.clone().context("acme has no logo")?;
    ensure!(services.brands.all() == vec![acme.clone()]);
    ensure!(services.files_on_disk()? == vec![first_logo.clone()]);
    ensure!(services.search.documents() == vec![acme.clone()]);

    services.search.set_down(true);
    println!("== run 2: give acme a new logo while the search index is down");
    let error = match run_as(&app, &workflow, "run-2", input("acme", "Acme", "v2")).await {
        Ok(brand) => anyhow::bail!("indexing should have failed: {brand:?}"),
        Err(error) => error,
    };
    println!("  result: {error}");
    services.print()?;
    ensure!(reverted_at_index(&error), "unexpected error: {error}");
    ensure!(
        services.brands.all() == vec![acme.clone()],
        "acme's previous logo is not restored"
    );
    ensure!(
        services.files_on_disk()? == vec![first_logo.clone()],
        "the new logo file is not deleted"
    );

    println!("== run 3: create brand globex while the search index is down");
    let error = match run_as(&app, &workflow, "run-3", input("globex", "Globex", "g1")).await {
        Ok(brand) => anyhow::bail!("indexing should have failed: {brand:?}"),
        Err(error) => error,
    };
    println!("  result: {error}");
    services.print()?;
    ensure!(reverted_at_index(&error), "unexpected error: {error}");
    ensure!(
        services.brands.all() == vec![acme],
        "globex was not deleted"
    );
    ensure!(services.files_on_disk()? == vec![first_logo]);
    println!("ok: failed runs restored the previous brands and deleted their uploaded files");
    Ok(())
}
