// The admin view: rooms and counts from the live room list (SDK), members
// from the REST routes, message rates from the stats route beside this page.
import { connect } from './client/index.js'

const $ = (id) => document.getElementById(id)
/** How often the stats are read: they are this instance's counters, not pushed. */
const STATS_MS = 2000
/** Where a server with tokens only keeps the admin's token: this tab, until it closes. */
const TOKEN_KEY = 'fastify-rooms-admin-token'

let token = sessionStorage.getItem(TOKEN_KEY) ?? undefined
const config = await loadConfig()
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${config.path}`
/** The room whose members are shown, and the cursor of their next page. */
let selected
let membersNext = null

let client
try {
  client = await connect(wsUrl, token === undefined ? { name: 'admin' } : { getToken: () => token })
} catch (err) {
  showState('closed')
  showError(`Could not connect: ${err.close?.reason || err.message}`)
  throw err
}
showState(client.state)
client.on('state', showState)

const list = await client.watchRooms()
list.on('change', ({ changed, reset }) => {
  renderRooms()
  if (selected !== undefined && (reset || changed.some((c) => c.name === selected))) void showMembers(selected)
})
renderRooms()
$('more-rooms').addEventListener('click', async () => { await list.more(); renderRooms() })
$('more-members').addEventListener('click', () => showMembers(selected, membersNext))
void readStats()

function renderRooms () {
  const rows = list.list().map(({ name, count }) => {
    const tr = document.createElement('tr')
    tr.dataset.room = name
    if (name === selected) tr.className = 'current'
    const th = document.createElement('th')
    th.scope = 'row'
    const button = document.createElement('button')
    button.type = 'button'
    button.textContent = name
    button.addEventListener('click', () => showMembers(name))
    th.append(button)
    const td = document.createElement('td')
    td.className = 'count'
    td.textContent = String(count)
    tr.append(th, td)
    return tr
  })
  $('rooms').replaceChildren(...rows)
  $('no-rooms').hidden = rows.length > 0
  $('room-total').textContent = rows.length > 0 ? `(${rows.length})` : ''
  $('more-rooms').hidden = list.next === null
}

/** The newest members request: an older one answering later must not overwrite what it showed. */
let membersRequest = 0

async function showMembers (room, after) {
  const mine = ++membersRequest
  const first = after === undefined || after === null
  if (first) {
    selected = room
    // The cursor belongs to the list being replaced: "more" must not fetch past it into this room.
    membersNext = null
    $('more-members').hidden = true
    renderRooms()
  }
  $('members-heading').textContent = `Members of ${room}`
  const query = new URLSearchParams({ membersLimit: '100' })
  if (!first) query.set('membersAfter', after)
  const res = await fetch(`${config.prefix}/${encodeURIComponent(room)}?${query}`, { headers: credentials() })
  if (mine !== membersRequest) return
  if (res.status === 404) {
    $('members').replaceChildren()
    $('members-hint').textContent = 'Nobody is in this room any more.'
    $('members-hint').hidden = false
    $('more-members').hidden = true
    return
  }
  const body = await res.json()
  if (mine !== membersRequest) return
  if (!res.ok) return showError(body.message)
  const items = body.members.map((m) => {
    const li = document.createElement('li')
    const name = document.createElement('span')
    name.textContent = m.name
    const id = document.createElement('span')
    id.className = 'member-id'
    id.textContent = m.id
    li.append(name, id)
    return li
  })
  if (first) $('members').replaceChildren(...items)
  else $('members').append(...items)
  $('members-hint').hidden = true
  membersNext = body.membersNext
  $('more-members').hidden = membersNext === null
}

async function readStats () {
  try {
    const stats = await getJson('stats')
    $('connections').textContent = stats.connections
    $('local-rooms').textContent = stats.rooms
    $('local-members').textContent = stats.members
    $('rate-published').textContent = stats.rates.published.toFixed(1)
    $('rate-delivered').textContent = stats.rates.delivered.toFixed(1)
    $('rate-in').textContent = stats.rates.framesReceived.toFixed(1)
    $('rate-out').textContent = stats.rates.framesSent.toFixed(1)
    $('total-published').textContent = stats.totals.published
    $('window').textContent = `rates over the last ${Math.round(stats.rates.seconds)} s`
  } catch (err) {
    showError(err.message)
  }
  setTimeout(readStats, STATS_MS)
}

async function getJson (url) {
  const res = await fetch(url, { headers: credentials() })
  const body = await res.json()
  if (!res.ok) throw new Error(body.message ?? `${url}: HTTP ${res.status}`)
  return body
}

/** A Bearer header once the admin gave a token; a cookie session needs none. */
function credentials () {
  return token === undefined ? {} : { authorization: `Bearer ${token}` }
}

/**
 * The page's config, the first guarded request. A server with tokens only
 * answers 401 with `WWW-Authenticate: Bearer` (a browser cannot send that
 * header when it loads a page): ask for a token, and again while it is
 * refused (401) or not an admin's (403).
 */
async function loadConfig () {
  for (;;) {
    const res = await fetch('config.json', { headers: credentials() })
    const body = await res.json().catch(() => ({}))
    if (res.ok) return body
    const bearer = /bearer/i.test(res.headers.get('www-authenticate') ?? '')
    if (!(res.status === 401 && bearer) && !(res.status === 403 && token !== undefined)) {
      showError(body.message ?? `config.json: HTTP ${res.status}`)
      throw new Error(body.message)
    }
    token = await askToken(token === undefined ? undefined : body.message)
    sessionStorage.setItem(TOKEN_KEY, token)
  }
}

async function askToken (refusal) {
  const form = $('token-form')
  $('token-error').textContent = refusal ?? ''
  $('token-error').hidden = refusal === undefined
  form.hidden = false
  $('token').focus()
  await new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault()
      if ($('token').value.trim() === '') return
      form.removeEventListener('submit', submit)
      resolve()
    }
    form.addEventListener('submit', submit)
  })
  form.hidden = true
  return $('token').value.trim()
}

function showState (state) {
  $('state').dataset.state = state
  $('state').textContent = state
  if (state === 'open') $('error').hidden = true
}

function showError (message) {
  $('error').textContent = message
  $('error').hidden = false
}
