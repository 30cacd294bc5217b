import { chromium, type Browser, type Page } from 'playwright-core'

export const CHROMIUM = '/usr/bin/chromium'

/** Debian's Chromium, headless, with nothing reaching outside this machine. */
export async function launchChromium (): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
  })
}

/** Log in on the demo page and wait until it shows the lobby. */
export async function enter (page: Page, url: string, nickname: string): Promise<void> {
  await page.goto(url)
  await page.fill('#nickname', nickname)
  await page.click('#login button')
  await page.waitForSelector('#room-title:text("# lobby")')
}

/** Type a message into the demo page's compose box and send it with Enter. */
export async function say (page: Page, text: string): Promise<void> {
  await page.fill('#text', text)
  await page.press('#text', 'Enter')
}
