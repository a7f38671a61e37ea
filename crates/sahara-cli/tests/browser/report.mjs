// Opens a `sahara report` page in Chromium (through playwright-core) and checks it as a user
// sees it. Run by crates/sahara-cli/tests/report.rs:
//   node report.mjs PAGE.html OUTDIR EXPECT.json
// with PLAYWRIGHT_CORE (the playwright-core package folder) and CHROMIUM (the browser) set.
// EXPECT: {"cells": L*H, "cell": [l, h], "mean": "…", "query": i, "query_value": "…",
//          "eval_query": i, "ablated": "condition", "ablated_answer": "…", "conditions": n}.
// Prints one JSON line of what it found; exits 1 on the first failed check.
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [page_path, outdir, expect_path] = process.argv.slice(2);
const expect = JSON.parse(readFileSync(expect_path, 'utf8'));
const { chromium } = await import(pathToFileURL(join(process.env.PLAYWRIGHT_CORE, 'index.mjs')).href);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
         '--disable-component-update', '--disable-sync'],
});
const url = pathToFileURL(page_path).href;
const found = {};
function check(ok, what) {
  if (!ok) {
    console.log(JSON.stringify({ failed: what, found }));
    process.exit(1);
  }
}
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('request', (r) => { if (r.url() !== url && !r.url().startsWith('data:')) requests.push(r.url()); });
  await page.goto(url);
  await page.waitForLoadState('load');

  const cells = page.locator('#ships-heatmap rect.cell');
  found.cells = await cells.count();
  check(found.cells === expect.cells, `the Ships heatmap has ${expect.cells} cells`);
  const [l, h] = expect.cell;
  const cell = page.locator(`#ships-heatmap rect.cell[data-l="${l}"][data-h="${h}"]`);
  found.tooltip = await cell.locator('title').textContent();
  check(found.tooltip.includes(`mean Ships ${expect.mean}`), `cell ${l}:${h}'s tooltip shows its mean ${expect.mean}`);
  const fills = async () => page.$$eval('#ships-heatmap rect.cell', (cs) => cs.map((c) => c.getAttribute('fill')).join(' '));
  const before = await fills();
  await page.selectOption('#ships-query', String(expect.query));
  const after = await fills();
  found.heatmap_changed = before !== after;
  check(found.heatmap_changed, 'selecting a query redraws the heatmap');
  found.query_tooltip = await cell.locator('title').textContent();
  check(found.query_tooltip.includes(`Ships ${expect.query_value}`), `the query's value ${expect.query_value} is in the tooltip`);
  found.prompt = await page.locator('#ships-prompt').textContent();
  check(found.prompt.startsWith(`Query ${expect.query_index + 1} `), 'the selected query is shown');
  await page.locator('#ships-heatmap').screenshot({ path: join(outdir, 'ships-query.png') });
  await page.selectOption('#ships-query', 'mean');
  // The keyboard: arrow keys move over the focused heatmap and the caption says where.
  await page.locator('#ships-heatmap').focus();
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowRight');
  found.focus = await page.locator('#ships-heatmap').locator('xpath=..').locator('.focus').textContent();
  check(found.focus.startsWith('layer 1 head 1:'), 'arrow keys move the heatmap cursor');

  await page.selectOption('#eval-query', String(expect.eval_query));
  const cards = page.locator('#eval-answers .answer');
  found.cards = await cards.count();
  check(found.cards === expect.conditions, `one answer per condition (${expect.conditions})`);
  const ablated = cards.filter({ has: page.locator('h4', { hasText: new RegExp(`^${expect.ablated.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }) });
  found.ablated_answer = await ablated.locator('pre').textContent();
  check(found.ablated_answer === expect.ablated_answer, 'the ablated answer is shown side by side');
  await page.locator('#eval').screenshot({ path: join(outdir, 'eval.png') });

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(outdir, 'report.png') });
  await page.screenshot({ path: join(outdir, 'report-full.png'), fullPage: true });
  await page.pdf({ path: join(outdir, 'report.pdf'), format: 'A4', printBackground: true });
  const pdf = readFileSync(join(outdir, 'report.pdf'), 'latin1');
  found.pdf_pages = (pdf.match(/\/Type\s*\/Page[^s]/g) || []).length;
  check(found.pdf_pages >= 1, 'the page prints to A4 PDF');
  found.pdf_bytes = statSync(join(outdir, 'report.pdf')).size;

  found.errors = errors;
  found.requests = requests;
  check(errors.length === 0, 'no console error');
  check(requests.length === 0, 'no network request');

  // JavaScript off: the static heatmaps, tables and the first query's answers are there.
  const nojs = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1200, height: 900 } });
  const p2 = await nojs.newPage();
  await p2.goto(url);
  found.nojs_cells = await p2.locator('#ships-heatmap rect.cell').count();
  check(found.nojs_cells === expect.cells, 'the heatmap is there with JavaScript off');
  found.nojs_tables = await p2.locator('table').count();
  check(found.nojs_tables >= 4, 'the tables are there with JavaScript off');
  found.nojs_cards = await p2.locator('#eval-answers .answer').count();
  check(found.nojs_cards === expect.conditions, 'the first answers are there with JavaScript off');
  console.log(JSON.stringify({ ok: true, found }));
} finally {
  await browser.close();
}
