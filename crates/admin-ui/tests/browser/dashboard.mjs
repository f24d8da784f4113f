// The dashboard in headless Chromium: log in; see a run appear live in the list; open it; watch
// its slow step turn from invoking to done; fail the waiting approval from the page and see
// the compensation run; retry; log out and be refused. Screenshots of the list and of the
// reverted run go to $SHOTS.
//   BASE=http://127.0.0.1:9313 SUPPLIER=sup_… SHOTS=docs node dashboard.mjs
import puppeteer from "puppeteer-core"
import assert from "node:assert/strict"

const BASE = process.env.BASE
const SUPPLIER = process.env.SUPPLIER
const SHOTS = process.env.SHOTS
const TX = `browser-${Date.now()}`
const step = (name) => console.log(`dashboard: ${name}`)

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
})
try {
  const page = await browser.newPage()
  await page.setViewport({ width: 1280, height: 900 })
  page.on("dialog", (dialog) => dialog.accept())
  const remote = []
  page.on("request", (request) => {
    const url = new URL(request.url())
    // data: URLs are the browser's own (the date picker's icon); anything fetched over the
    // network must come from this server.
    if (url.protocol !== "data:" && url.origin !== new URL(BASE).origin) remote.push(request.url())
  })

  step("log in")
  await page.goto(`${BASE}/app/workflows`)
  assert.match(page.url(), /\/app\/login$/, "signed out, the list leads to the login")
  await page.type("input[name=email]", "admin@example.com")
  await page.type("input[name=password]", "supersecret")
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")])
  assert.match(page.url(), /\/app\/workflows$/)

  step("a run appears live in the list")
  await page.waitForSelector("tbody[data-live]")
  await page.evaluate((tx, supplier) => {
    // Not awaited: the run answers once it waits for the approval.
    fetch("/admin/workflows-executions/review-restock/run", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: { supplier_id: supplier, amount: 120 }, transaction_id: tx }),
    })
  }, TX, SUPPLIER)
  await page.waitForFunction((tx) => document.querySelector("tbody").innerText.includes(tx), { timeout: 10000 }, TX)

  step("open it and watch the slow step turn from invoking to done")
  await Promise.all([page.waitForNavigation(), page.click(`a[href$="/${TX}"]`)])
  await page.waitForSelector('g[data-step="reserve-budget"][data-class="invoking"]', { timeout: 5000 })
  await page.waitForSelector('g[data-step="reserve-budget"][data-class="done"]', { timeout: 10000 })
  await page.waitForSelector('g[data-step="manager-approval"][data-class="waiting"]', { timeout: 10000 })

  step("fail the waiting approval from the page: the reservation is compensated")
  await page.waitForSelector("button[data-post$='/steps/failure']")
  await Promise.all([page.waitForNavigation(), page.click("button[data-post$='/steps/failure']")])
  await page.waitForSelector('[data-state="reverted"]', { timeout: 10000 })
  await page.waitForSelector('g[data-step="reserve-budget"][data-class="reverted"]')
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/dashboard-detail.png`, fullPage: true })

  step("the list shows it reverted")
  await page.goto(`${BASE}/app/workflows?workflow_id=review-restock`)
  await page.waitForFunction((tx) => document.querySelector("tbody").innerText.includes(tx), {}, TX)
  const row = await page.evaluate((tx) => [...document.querySelectorAll("tbody tr")].find((r) => r.innerText.includes(tx)).innerText, TX)
  assert.match(row, /reverted/)
  assert.match(row, /1 of 2 steps/)
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/dashboard-list.png`, fullPage: true })

  step("retry: it runs again under a new transaction id")
  await page.goto(`${BASE}/app/workflows/review-restock/${TX}`)
  await Promise.all([page.waitForNavigation(), page.click("button[data-post$='/retry']")])
  assert.match(decodeURIComponent(page.url()), new RegExp(`${TX}-retry-`))
  await page.waitForSelector('g[data-step="reserve-budget"]')

  step("log out, and be refused")
  await Promise.all([page.waitForNavigation(), page.click(".account button")])
  assert.match(page.url(), /\/app\/login$/)
  await page.goto(`${BASE}/app/workflows`)
  assert.match(page.url(), /\/app\/login$/)
  const api = await page.evaluate(async () => (await fetch("/admin/users/me")).status)
  assert.equal(api, 401)

  assert.deepEqual(remote, [], "no request leaves the server's origin")
  step("all passed")
} finally {
  await browser.close()
}
