"""A/B of OHIF settings and the list page's timing breakdown, against a region kept up by
``python -m bench.portal --hold`` (which prints the portal, cookie, NHS number and CT study).

    python -m bench.portal.ab --portal URL --cookie C --nhs N --study UID [--variants base,cpu] [--runs 5]

Each variant is OHIF's app-config.js as the portal serves it with a few settings changed in the browser
(the page's request for app-config.js is answered with the portal's own file plus one assignment), so
variants are compared in the same region, interleaved run by run, without restarting anything. A variant
``name@http://host:port`` opens the viewer at another portal of the same region (e.g. one started by hand with
the same arguments on another port, running other code). Each variant has its own browser context, opened
once first (code cached, as bench.portal's "warm" opens); ``--cold`` opens each time with an empty cache.
``--list-runs`` splits the search in Chromium by the navigation's own timing; ``--list-variants`` compares
changes of the list page's HTML (made in the browser) the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

from bench.load import percentile
from bench.portal.__main__ import CHROMIUM, CHROMIUM_ARGS, FIRST_FRAME_WATCH, LIST_RENDERED_WATCH, load

VARIANTS = {
    "base": "",
    "cpu": "window.config.useCPURendering = true;",
    "noprefetch": "window.config.maxNumRequests.prefetch = 0;",
    "workers1": "window.config.maxNumberOfWebWorkers = 1;",
}


def _patcher(extra: str):
    async def patch(route) -> None:
        response = await route.fetch()
        await route.fulfill(response=response, body=(await response.text()) + "\n" + extra + "\n")
    return patch


async def first_frame(page, url: str) -> float:
    await page.goto("about:blank")
    await page.goto(url, wait_until="commit")
    handle = await page.wait_for_function("() => window.__checkFrame && window.__checkFrame()", polling=250,
                                          timeout=180_000)
    return float(await handle.json_value())


async def viewer_ab(browser, portal: str, cookie: str, study: str, variants: list[str], runs: int,
                    cold: bool = False) -> dict:
    """Each variant is a name of VARIANTS, optionally ``@`` another portal's address (the same region, a
    portal running other code). ``cold``: every open in a new browser context (empty cache)."""
    async def new_page(spec: str):
        name, _, where = spec.partition("@")
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        await context.add_cookies([{"name": "xds_portal_session", "value": cookie, "url": where or portal}])
        if VARIANTS[name]:
            await context.route("**/viewer/app-config.js", _patcher(VARIANTS[name]))
        page = await context.new_page()
        await page.add_init_script(FIRST_FRAME_WATCH)
        return page, f"{where or portal}/viewer/viewer?StudyInstanceUIDs={study}"

    pages = {}
    if not cold:
        for spec in variants:
            pages[spec] = await new_page(spec)
            await first_frame(*pages[spec])  # code cached
    found: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(runs):
        for spec in variants:
            if cold:
                page, url = await new_page(spec)
                found[spec].append(await first_frame(page, url))
                await page.context.close()
            else:
                found[spec].append(await first_frame(*pages[spec]))
    return found


LIST_VARIANTS = {
    "base": lambda html: html,
    "fixed": lambda html: html.replace(
        "</head>", "<style>table.documents{table-layout:fixed;width:100%}</style></head>"),
    "noforms": lambda html: re.sub(r'<form method="post" action="/imports".*?</form>', "", html, flags=re.S),
    "cv": lambda html: html.replace("</head>", "<style>table.documents{content-visibility:auto;"
                                    "contain-intrinsic-size:auto 8000px}</style></head>"),
}


def _list_patcher(change):
    async def patch(route) -> None:
        response = await route.fetch()
        await route.fulfill(response=response, body=change(await response.text()))
    return patch


async def list_ab(browser, portal: str, cookie: str, nhs: str, variants: list[str], runs: int) -> dict:
    pages = {}
    for name in variants:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        await context.add_cookies([{"name": "xds_portal_session", "value": cookie, "url": portal}])
        await context.route("**/patients/**", _list_patcher(LIST_VARIANTS[name]))
        page = await context.new_page()
        await page.add_init_script(LIST_RENDERED_WATCH)
        pages[name] = page
    found: dict[str, list[dict]] = {n: [] for n in variants}
    for n in range(runs + 1):
        for name in variants:
            timing = await one_search(pages[name], portal, nhs)
            if n:
                found[name].append(timing)
    return found


async def one_search(page, portal: str, nhs: str) -> dict:
    await page.goto(portal + "/")
    await page.fill("input[name=nhs_number]", nhs)
    await page.click("form.search button[type=submit]")
    await page.wait_for_url("**/patients/**", wait_until="commit")
    await page.wait_for_function("() => window.__rendered", polling=50, timeout=120_000)
    return await page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
      return {redirect_end: n.redirectEnd, response_start: n.responseStart, response_end: n.responseEnd,
              dom_content_loaded: n.domContentLoadedEventEnd, rendered: window.__rendered,
              bytes: n.encodedBodySize}; }""")


async def list_breakdown(browser, portal: str, cookie: str, nhs: str, runs: int) -> list[dict]:
    """The search in Chromium split by the navigation's own timing: redirect (POST /search and its 303),
    the list's response start and end, DOMContentLoaded and the rows painted."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_cookies([{"name": "xds_portal_session", "value": cookie, "url": portal}])
    page = await context.new_page()
    await page.add_init_script(LIST_RENDERED_WATCH)
    out = []
    for _ in range(runs + 1):
        await page.goto(portal + "/")
        await page.fill("input[name=nhs_number]", nhs)
        await page.click("form.search button[type=submit]")
        await page.wait_for_url("**/patients/**", wait_until="commit")
        await page.wait_for_function("() => window.__rendered", polling=50, timeout=120_000)
        out.append(await page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
          return {redirect_end: n.redirectEnd, request_start: n.requestStart, response_start: n.responseStart,
                  response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventEnd,
                  rendered: window.__rendered, bytes: n.encodedBodySize}; }"""))
    return out[1:]


async def main_async(args) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=CHROMIUM_ARGS)
        try:
            print(f"load {load()}", flush=True)
            if args.list_runs:
                rows = await list_breakdown(browser, args.portal, args.cookie, args.nhs, args.list_runs)
                for key in rows[0]:
                    print(f"list {key}: p50 {percentile([r[key] for r in rows], 50):.0f}", flush=True)
            if args.list_variants:
                found = await list_ab(browser, args.portal, args.cookie, args.nhs, args.list_variants.split(","),
                                      args.list_ab_runs)
                for name, rows in found.items():
                    print(f"list {name}: " + ", ".join(f"{k} {percentile([r[k] for r in rows], 50):.0f}"
                                                       for k in rows[0]), flush=True)
            if args.runs:
                found = await viewer_ab(browser, args.portal, args.cookie, args.study, args.variants.split(","),
                                        args.runs, args.cold)
                for name, values in found.items():
                    runs = json.dumps([round(v) for v in values])
                    print(f"viewer {name}: p50 {percentile(values, 50):.0f} ms  {runs}", flush=True)
            print(f"load {load()}", flush=True)
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.portal.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--portal", required=True)
    parser.add_argument("--cookie", required=True)
    parser.add_argument("--nhs", default="")
    parser.add_argument("--study", default="")
    parser.add_argument("--variants", default="base,cpu", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--runs", type=int, default=5, help="viewer opens per variant (0: none)")
    parser.add_argument("--list-runs", type=int, default=0, help="searches in Chromium to break down")
    parser.add_argument("--cold", action="store_true", help="every viewer open with an empty browser cache")
    parser.add_argument("--list-variants", default="", help=f"list page variants, of {', '.join(LIST_VARIANTS)}")
    parser.add_argument("--list-ab-runs", type=int, default=8)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
