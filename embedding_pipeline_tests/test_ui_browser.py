"""The Dagster UI as a user sees it: real `dagster dev`, real Postgres instance, headless Chromium.

One `dagster dev` serves every test in this module (it takes ~25 s to start). Screenshots of
every page visited land in test-artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest
from playwright.sync_api import expect, sync_playwright
from psycopg import sql

from embedding_pipeline.config import load_config
from embedding_pipeline.db.connection import DAGSTER_DATABASE_URL_ENV
from embedding_pipeline.defs.embeddings import assets as embedding_assets
from embedding_pipeline.defs.resources import PipelineResource, asset_name
from embedding_pipeline_tests.support.configs import TEST_CONFIG
from embedding_pipeline_tests.support.dagster_ui import (
    LOCATION,
    chromium_available,
    launch_chromium,
    running_dagster_dev,
    screenshot,
    ui_databases,
)
from embedding_pipeline_tests.support.net import free_port
from embedding_pipeline_tests.support.sources import make_documents

pytestmark = pytest.mark.browser

N_DOCUMENTS = 12
N_MESSAGES = 12
UI_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 1000}
# The pop-up Dagster shows on a first visit from localhost (dagster-webserver 1.13).
NUX_TITLE = "Join the Dagster community"
EVAL_MODULE = "embedding_pipeline.defs.evaluation.assets"


def make_message_embeddings(conn, n: int) -> None:
    """Shaped like Honcho's message_embeddings: bigint ids, no soft delete."""
    table = sql.Identifier("public", "message_embeddings")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, content text, embedding vector(384))").format(table))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (id, content) VALUES (%s, %s)").format(table),
                        [(i, f"Message {i} about the weekly release.") for i in range(1, n + 1)])
    conn.commit()


def current_definitions() -> dg.Definitions:
    from embedding_pipeline.definitions import defs

    return defs


def groups_and_assets() -> dict[str, list[str]]:
    """Group name -> asset names, as the definitions under test declare them today."""
    groups: dict[str, list[str]] = {}
    for spec in current_definitions().resolve_all_asset_specs():
        groups.setdefault(spec.group_name or "default", []).append(spec.key.path[-1])
    return groups


@pytest.fixture(scope="module")
def ui(pg_admin_url, tmp_path_factory):
    """`dagster dev` against a fresh database holding both packaged sources; env set for this process too."""
    if not chromium_available():
        pytest.fail("Chromium not found at /usr/bin/chromium: `apt-get install chromium` (.ci/run does it)")
    base = tmp_path_factory.mktemp("dagster_ui")
    config_path = base / "pipeline.yaml"
    shutil.copyfile(TEST_CONFIG, config_path)
    (base / "state").mkdir()
    (base / "dagster_home").mkdir()
    with ui_databases(pg_admin_url, base / "state") as (db, instance_url), pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDDING_PIPELINE_DATABASE_URL", db.url)
        mp.setenv("EMBEDDING_PIPELINE_HOME", str(base / "state"))
        mp.setenv("EMBEDDING_PIPELINE_CONFIG", str(config_path))
        with db.connect() as conn:
            make_documents(conn, N_DOCUMENTS)
            make_message_embeddings(conn, N_MESSAGES)
        with running_dagster_dev(db, instance_url, dict(os.environ), base / "dagster_home", free_port()) as server:
            # Runs started in this process land in the same Postgres instance the UI reads.
            for key in ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL", DAGSTER_DATABASE_URL_ENV):
                mp.setenv(key, server.env[key])
            server.config_path = config_path
            yield server


@pytest.fixture(scope="module")
def browser(ui):
    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport=VIEWPORT, base_url=ui.url)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def open_page(page, route: str) -> None:
    page.goto(route)
    page.wait_for_load_state("networkidle")


def test_every_asset_group_renders(ui, page):
    """A user must find every domain (embeddings, backup, evaluation, ...) in the catalog and its lineage graph."""
    groups = groups_and_assets()
    assert "embeddings" in groups

    # The catalog renders only the rows in view: make room for all of them.
    page.set_viewport_size({"width": 1400, "height": 300 + 80 * sum(map(len, groups.values()))})
    open_page(page, "/assets")
    for group in groups:
        # Each catalog row links to its group; key prefixes repeat group names, so plain text proves nothing.
        expect(page.locator(f"a[href*='group%3A\"{group}\"']").first).to_be_visible()
    screenshot(page, "catalog")
    # Large groups are zoomed out to fit; below a zoom level Dagster drops node labels.
    page.set_viewport_size({"width": 2600, "height": 1800})

    for group, assets in groups.items():
        open_page(page, f"/locations/{LOCATION}/asset-groups/{group}")
        expect(page.get_by_text("Asset Group in", exact=False).first).to_be_visible()
        for name in assets:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        screenshot(page, f"group_{group}")
    page.set_viewport_size(VIEWPORT)

    open_page(page, "/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    # One group is drawn as its assets; several groups as one collapsed box per group.
    expected = groups["embeddings"] if len(groups) == 1 else list(groups)
    for name in expected:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    screenshot(page, "global_lineage")


def test_partitions_view_lists_every_source(ui, page):
    """Each source table is one partition; a missing one would mean a table never gets re-embedded."""
    sources = sorted(load_config(ui.config_path).sources)
    assert sources == ["documents", "message_embeddings"]
    open_page(page, f"/assets/embeddings/{asset_name('minilm-256')}?view=partitions")
    for key in sources:
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    expect(page.get_by_text(f"{len(sources)} Partitions", exact=False).first).to_be_visible()
    screenshot(page, "minilm_256_partitions")


def test_first_visit_popup_is_not_shown(ui, page):
    """The community pop-up covers the graph on every fresh DAGSTER_HOME; `make dev` must suppress it."""
    assert ui.graphql("{ shouldShowNux }")["shouldShowNux"] is False
    open_page(page, "/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    # The pop-up opens one second after the page renders when it is going to be shown at all.
    page.wait_for_timeout(2_000)
    expect(page.get_by_text(NUX_TITLE)).to_have_count(0)
    expect(page.get_by_role("dialog")).to_have_count(0)
    screenshot(page, "no_first_visit_popup")


def test_materialized_partition_shows_its_metadata(ui, page):
    """After a real re-embed the asset page must show what the run did (rows embedded, coverage)."""
    key = dg.AssetKey(["embeddings", asset_name("minilm-256")])
    # The domain's own factory: the merged definitions already bind a `pipeline` resource.
    [asset] = [a for a in embedding_assets.build(load_config(ui.config_path)).assets if a.key == key]
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([asset], partition_key="documents", instance=instance,
                                resources={"pipeline": PipelineResource(config_path=str(ui.config_path))})
    assert result.success
    [event] = result.asset_materializations_for_node(asset.node_def.name)
    assert event.metadata["rows_embedded"].value == N_DOCUMENTS

    open_page(page, f"/assets/embeddings/{key.path[-1]}?view=partitions&partition=documents")
    expect(page.get_by_text("rows_embedded", exact=True).first).to_be_visible()
    row = page.locator("tr", has=page.get_by_text("rows_embedded", exact=True)).first
    expect(row).to_contain_text(str(N_DOCUMENTS))
    expect(page.get_by_text("coverage_pct", exact=True).first).to_be_visible()
    expect(page.get_by_text("Materialized (1)", exact=False).first).to_be_visible()
    screenshot(page, "minilm_256_documents_materialized")

    open_page(page, f"/assets/embeddings/{key.path[-1]}")
    expect(page.get_by_text("rows_embedded", exact=True).first).to_be_visible()
    screenshot(page, "minilm_256_overview")


def fill_legacy_vectors(conn, provider, table: str) -> None:
    """The legacy `embedding` column as the deployment's old model left it (the eval's active space)."""
    ident = sql.Identifier("public", table)
    rows = conn.execute(sql.SQL("SELECT id, content FROM {} WHERE embedding IS NULL ORDER BY id").format(ident)).fetchall()
    vectors = provider.embed_documents([content for _, content in rows])
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("UPDATE {} SET embedding = %s WHERE id = %s").format(ident),
                        [(vec, row_id) for (row_id, _), vec in zip(rows, vectors)])
    conn.commit()


def test_eval_report_shows_table_and_plot(ui, page):
    """The shadow-eval report is read in the UI: its metrics table and plot must render there."""
    eval_assets = pytest.importorskip(EVAL_MODULE, reason="the evaluation assets are not built yet")
    candidate = "minilm-256"  # the cheapest real space
    # message_embeddings (bigint ids): the documents partition belongs to the re-embed test above.
    source = "message_embeddings"
    key = eval_assets.eval_asset_key(candidate)
    served = {spec.key for spec in current_definitions().resolve_all_asset_specs()}
    assert key in served, (f"{key.to_user_string()} is not in the code location: merge "
                           "`evaluation_assets.build(config)` into embedding_pipeline/definitions.py")
    config = load_config(ui.config_path)
    pipeline = PipelineResource(config_path=str(ui.config_path))
    active = config.source(source).active_space
    with ui.db.connect() as conn:
        fill_legacy_vectors(conn, pipeline.provider(active), config.source(source).table)
    embed_key = dg.AssetKey(["embeddings", asset_name(candidate)])
    assets = [a for a in embedding_assets.build(config).assets if a.key == embed_key]
    assets += [a for a in eval_assets.build(config).assets if a.key == key]
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(assets, partition_key=source, instance=instance, resources={"pipeline": pipeline})
    assert result.success
    [event] = result.asset_materializations_for_node(assets[1].node_def.name)
    assert event.metadata["candidate_space"].value == candidate

    # The events view opens on the latest materialization, for defined and not-yet-defined assets alike.
    open_page(page, f"/assets/{'/'.join(key.path)}?view=events")
    expect(page.get_by_text(f"Partition {source} materialized", exact=False).first).to_be_visible()
    page.get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    table = dialog.locator("table").first
    expect(table).to_be_visible()
    expect(table.locator("th")).to_contain_text(["metric", f"{active} (active)", f"{candidate} (candidate)"])
    plot = dialog.locator("img[src^='data:image/png']").first
    expect(plot).to_be_visible()
    plot.scroll_into_view_if_needed()
    # naturalWidth > 0 only if the browser really decoded the embedded PNG.
    assert plot.evaluate("img => img.complete && img.naturalWidth") > 100
    screenshot(page, "eval_report")


CONFIG_VALID = """query ($selector: PipelineSelector!, $runConfigData: RunConfigData) {
  isPipelineConfigValid(pipeline: $selector, mode: "default", runConfigData: $runConfigData) {
    __typename ... on RunConfigValidationInvalid { errors { message } } } }"""


def test_launchpad_offers_sources_and_spaces_and_rejects_a_typo(ui, page):
    """The cutover job's source and space are choices from the config: the webserver rejects a typo before any
    run, naming the allowed values, and the Launchpad renders with that schema."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "pipelineName": "cutover"}

    def check(source, space):
        return ui.graphql(CONFIG_VALID, {"selector": selector, "runConfigData": {
            "ops": {"cutover_op": {"config": {"source": source, "space": space}}}}})["isPipelineConfigValid"]

    assert check("documents", "minilm-256")["__typename"] == "PipelineConfigValidationValid"
    bad = check("documents", "minilm-265")
    assert bad["__typename"] == "RunConfigValidationInvalid"
    [error] = bad["errors"]
    assert "minilm-265" in error["message"] and "e5-small | minilm | minilm-256" in error["message"]
    open_page(page, f"/locations/{LOCATION}/jobs/cutover/playground")
    # The Launchpad validates as it is typed: the typo is flagged with the allowed values before any launch.
    expect(page.get_by_text("Missing required config entries ['source', 'space']", exact=False).first).to_be_visible(
        timeout=UI_TIMEOUT_MS)
    page.locator(".CodeMirror").first.evaluate(
        "el => el.CodeMirror.setValue('ops:\\n  cutover_op:\\n    config:\\n      source: documents\\n"
        "      space: minilm-265\\n')")
    expect(page.get_by_text("not in enum type space (e5-small | minilm | minilm-256) got minilm-265",
                            exact=False).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "cutover_launchpad")
