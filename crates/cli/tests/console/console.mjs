// Browser test of the console, run by crates/cli/tests/it/console.rs
// against a real `slipway up`: headless Debian chromium driven by
// playwright-core. Builds are started with the real CLI. Every check throws
// on failure (the process then exits non-zero); screenshots of each page go
// to $ARTIFACTS.

import { createRequire } from "node:module";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env("CONSOLE_URL");
const TOKEN = env("ADMIN_TOKEN");
const SCOPED = env("SCOPED_TOKEN");
const SLIPWAY = env("SLIPWAY_BIN");
const BASE = env("BASE_IMAGE");
const CTX = env("CONTEXTS");
const ARTIFACTS = env("ARTIFACTS");
const HOST = new URL(URL_).host;
mkdirSync(ARTIFACTS, { recursive: true });

const { chromium } = createRequire(path.join(env("SLIPWAY_NPM"), "/"))("playwright-core");

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

// `slipway build` on the default pool; resolves with its exit code.
function build(ctx, tag) {
  const child = spawn(SLIPWAY, ["build", "--pool", "default", "-t", `${HOST}/console/${tag}:1`,
    "--build-arg", `BASE=${BASE}`, path.join(CTX, ctx)], {
    env: { ...process.env, SLIPWAY_SERVER: URL_, SLIPWAY_TOKEN: TOKEN },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d) => { out += d; });
  child.stderr.on("data", (d) => { out += d; });
  const done = new Promise((resolve) => child.on("exit", (code) => resolve({ code, out })));
  return { child, done };
}

async function api(p, token = TOKEN) {
  const r = await fetch(`${URL_}/api/v1${p}`, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`${p}: HTTP ${r.status}`);
  return r.json();
}

// The newest run whose tags name `tag`.
async function runOf(tag) {
  for (let i = 0; i < 300; i++) {
    const runs = await api(`/runs?q=${encodeURIComponent(`console/${tag}`)}&limit=5`);
    if (runs.length) return runs[0];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no run for ${tag}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
page.on("pageerror", (e) => { console.error(`page error: ${e.message}`); process.exitCode = 1; });
page.on("dialog", (d) => d.accept());
const shot = (name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: false });
const signIn = async (token) => {
  await page.goto(`${URL_}/#/signin`);
  await page.fill("#token", token);
  await page.press("#token", "Enter");
};

try {
  // A wrong token: a clear error, still on the sign-in form.
  await signIn("slw_not-a-real-token");
  await page.waitForSelector("#signin-error:has-text('not valid on this server')");
  check(await page.isVisible("#token"), "a wrong token shows the sign-in error");
  await shot("signin-error");

  // Pools: the default pool and its agents.
  await signIn(TOKEN);
  await page.waitForSelector("article[aria-label='pool default'] td:has-text('idle'), article[aria-label='pool default'] td:has-text('busy')");
  check(await page.isVisible("article[aria-label='pool default']"), "the default pool and its agents are listed");
  await shot("pools");

  // A build started from the CLI: its log lines appear live. The first
  // log request after tick-2 is dropped: the page resumes where it was.
  const slow = build("slow", "slow");
  const slowRun = await runOf("slow");
  let dropped = false;
  await page.route("**/logs?**", async (route) => {
    if (!dropped && new URL(route.request().url()).searchParams.get("after") !== "0") {
      dropped = true;
      return route.abort("connectionreset");
    }
    return route.continue();
  });
  await page.goto(`${URL_}/#/runs/${slowRun.id}`);
  await page.waitForSelector(".log-row:has-text('tick-3')", { timeout: 120000 });
  const before = await page.locator(".log-row").count();
  await page.waitForSelector(".log-row:has-text('tick-6')", { timeout: 60000 });
  check((await page.locator(".log-row").count()) > before, "log lines appear live while the build runs");
  check(dropped, "a log request was dropped on the way");
  await page.unroute("**/logs?**");
  await shot("run-live");
  // Cancel from the page; the CLI that started it exits non-zero.
  await page.click("#cancel");
  await page.waitForSelector("h1 .badge:has-text('canceled')", { timeout: 60000 });
  const slowEnd = await slow.done;
  check(slowEnd.code !== 0, `the CLI exits non-zero after a cancel from the page (exit ${slowEnd.code})`);
  await page.waitForSelector("text=End of log.");
  const ticks = (await page.locator(".log-row").allTextContents())
    .map((t) => /tick-(\d+)$/.exec(t.trim()))
    .filter(Boolean)
    .map((m) => Number(m[1]));
  check(ticks.length >= 6 && ticks.every((n, i) => n === i + 1),
    `after the dropped request no line is lost or doubled: ${ticks.join(",")}`);

  // A failing build: marked failed, with the failing step.
  const bad = await build("fails", "fails").done;
  check(bad.code !== 0, "the failing build fails in the CLI");
  const badRun = await runOf("fails");
  await page.goto(`${URL_}/#/runs/${badRun.id}`);
  await page.waitForSelector("h1 .badge:has-text('failed')");
  await page.waitForSelector("tr:has(td:has-text('echo about-to-fail')) .badge:has-text('failed')");
  check(true, "a failed run shows its failing step");
  await page.waitForSelector("text=End of log.");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("text=Download log")]);
  const saved = readFileSync(await download.path(), "utf8");
  check(saved.includes("about-to-fail\n") && download.suggestedFilename() === `${badRun.id}.log`,
    "the log downloads whole");
  await shot("run-failed");

  // A successful build, its run list and the registry pages.
  const hello = await build("hello", "hello").done;
  check(hello.code === 0, `examples/hello builds: ${hello.out.slice(-300)}`);
  await page.goto(`${URL_}/#/runs`);
  await page.waitForSelector("td .badge:has-text('succeeded')");
  await page.fill("#f-text", "console/fails");
  await page.press("#f-text", "Enter");
  await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 1);
  check((await page.locator("tbody tr").first().textContent()).includes("failed"), "the text filter finds the failed run only");
  await page.goto(`${URL_}/#/runs`);
  await page.waitForSelector("td .badge:has-text('succeeded')");
  await shot("runs");
  await page.goto(`${URL_}/#/repositories`);
  await page.waitForSelector("a:has-text('console/hello')");
  await shot("repositories");
  await page.click("a:has-text('console/hello')");
  await page.waitForSelector("td.mono:has-text('sha256:')");
  const pull = await page.inputValue("input[aria-label^='pull command']");
  check(pull === `docker pull ${HOST}/console/hello:1`, `the pull command to copy: ${pull}`);
  await shot("repository");

  // 100,000 log lines: only the rows in view are in the page.
  const big = await build("many", "many").done;
  check(big.code === 0, "the 100,000-line build succeeds");
  const bigRun = await runOf("many");
  await page.goto(`${URL_}/#/runs/${bigRun.id}`);
  await page.waitForSelector("text=End of log.", { timeout: 120000 });
  const rows = await page.locator(".log-row").count();
  check(rows > 0 && rows < 500, `a 100,000-line log renders ${rows} rows, not all`);
  await page.evaluate(() => { const l = document.querySelector(".log"); l.scrollTop = l.scrollHeight; });
  await page.waitForSelector(".log-row:has-text('line-100000')");
  await page.evaluate(() => { const l = document.querySelector(".log"); l.scrollTop = l.scrollHeight / 2; });
  await page.waitForSelector(".log-row:has-text('line-5')");
  check(true, "the end and the middle of the log are reachable by scrolling");
  await shot("run-100k-lines");

  // Keyboard: the navigation is reachable with Tab and works with Enter.
  await page.goto(`${URL_}/#/pools`);
  await page.waitForSelector("article[aria-label='pool default']");
  await page.focus("nav a[href='#/runs']");
  await page.keyboard.press("Enter");
  await page.waitForSelector("h1:has-text('Runs')");
  check(true, "the navigation works from the keyboard");

  // An unknown run: a not-found page.
  await page.goto(`${URL_}/#/runs/r999999`);
  await page.waitForSelector("h1:has-text('Not found')");
  check(true, "an unknown run id shows a not-found page");
  await shot("not-found");

  // Tasks: the stored task and its file.
  await page.goto(`${URL_}/#/tasks`);
  await page.click("a:has-text('nightly')");
  await page.waitForSelector("pre:has-text('version: v1.1.0')");
  check(true, "a stored task shows with its file");
  await shot("task");

  // Tokens (admin): create one with a grant; its secret shows once.
  await page.goto(`${URL_}/#/tokens`);
  await page.waitForSelector("td:has-text('viewer')");
  await page.fill("#t-name", "made-in-console");
  await page.fill("#t-grants", "pool:other:build");
  await page.click("button:has-text('Create')");
  await page.waitForSelector("text=it is shown only now");
  await page.waitForSelector("td:has-text('made-in-console')");
  const secret = await page.textContent(".notice code");
  const listed = await api("/runs?limit=1", secret);
  check(secret.startsWith("slw_") && Array.isArray(listed), "a token created in the console works");
  await shot("tokens");
  await page.setViewportSize({ width: 420, height: 800 });
  await page.click("#theme");
  await page.click("#theme");
  await page.goto(`${URL_}/#/runs/${badRun.id}`);
  await page.waitForSelector("text=End of log.");
  check(await page.evaluate(() => document.documentElement.dataset.theme === "dark"), "the dark theme applies");
  await shot("run-narrow-dark");
  await page.setViewportSize({ width: 1280, height: 800 });

  // A pool-scoped token sees only its pool and none of the default pool's runs.
  await page.click("#signout");
  await signIn(SCOPED);
  await page.waitForSelector("article[aria-label='pool other']");
  check(!(await page.isVisible("article[aria-label='pool default']")), "a scoped token does not see the default pool");
  await page.goto(`${URL_}/#/runs`);
  await page.waitForSelector("text=No run matches.");
  check(true, "a scoped token sees no other pool's runs");
  await page.goto(`${URL_}/#/runs/${badRun.id}`);
  await page.waitForSelector("h1:has-text('Not allowed')");
  check(true, "a scoped token cannot open another pool's run");
  await shot("scoped");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
