// The demo chat page. Everything it knows of the protocol comes from the SDK.
import { connect } from './client/index.js'

const $ = (id) => document.getElementById(id)
const config = await (await fetch('config.json')).json()
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${config.path}`
/** Messages shown on a first visit to a room, from its history. */
const HISTORY = 50
/** A typing indicator is sent at most this often, and shown this long after the last one. */
const TYPING_MS = 2000

let client
/** Set from a login's submit until it fails: one connection per login, however often Enter is pressed. */
let loggingIn = false
/** The live room list (server-pushed counts), or undefined when the server does not offer it. */
let roomList
/** Lines of a room's log the page keeps. */
const MAX_LINES = 1000
/** Rooms this page is in: name -> { room, nodes: [li], unread, seen, offs }. */
const views = new Map()
/** The room shown. */
let current
/** Who is typing in the current room: member id -> { name, timer }. */
const typing = new Map()
let typingSent = 0
let countdown

$('nickname').value = localStorage.getItem('nickname') ?? ''

$('login').addEventListener('submit', async (event) => {
  event.preventDefault()
  if (loggingIn) return
  const name = $('nickname').value.trim()
  setError('login-error', '')
  $('nickname').removeAttribute('aria-invalid')
  if (name === '') {
    $('nickname').setAttribute('aria-invalid', 'true')
    setError('login-error', 'Pick a nickname: it cannot be blank.')
    $('nickname').focus()
    return
  }
  loggingIn = true
  $('login').querySelector('button').disabled = true
  showState('connecting')
  try {
    client = await connect(wsUrl, { name })
  } catch (err) {
    loggingIn = false
    $('login').querySelector('button').disabled = false
    showState('closed')
    setError('login-error', `Could not connect: ${await refusal(err, name)}`)
    $('nickname').focus()
    return
  }
  localStorage.setItem('nickname', name)
  showState(client.state)
  client.on('state', onState)
  client.on('error', (err) => setError('room-error', err.message))
  $('login').hidden = true
  $('chat').hidden = false
  document.body.classList.add('in')
  await watchRooms()
  await enter(new URLSearchParams(location.search).get('room') ?? 'lobby')
})

/**
 * Why the connection was refused, in the server's words: a close reason
 * (4001 and the like) when there was one; for an upgrade refused over HTTP,
 * which a browser WebSocket cannot read, the same request once more as a
 * plain GET, whose answer carries the server's sentence.
 */
async function refusal (err, name) {
  if (err.close?.reason) return err.close.reason
  try {
    const res = await fetch(`${config.path}?name=${encodeURIComponent(name)}`, { headers: { accept: 'application/json' } })
    const body = await res.json()
    // 426: the GET passed every check an upgrade gets, so nothing there refused it.
    if (!res.ok && res.status !== 426 && typeof body.message === 'string') return body.message
  } catch {}
  return err.message
}

async function watchRooms () {
  try {
    roomList = await client.watchRooms()
  } catch {
    // Not offered (rest and roomList off): the list shows the rooms this page is in.
    roomList = undefined
  }
  roomList?.on('change', showRooms)
  showRooms()
}

$('new-room').addEventListener('submit', async (event) => {
  event.preventDefault()
  const name = $('room-name').value.trim()
  if (await enter(name)) $('room-name').value = ''
})

$('leave-room').addEventListener('click', async () => {
  const view = views.get(current)
  if (view === undefined) return
  dropView(current)
  view.room.leave().catch(() => {})
  const next = [...views.keys()][0]
  if (next !== undefined) show(next)
  else clearRoom()
  showRooms()
})

$('text').addEventListener('input', () => {
  const view = views.get(current)
  if (view === undefined || $('text').value === '' || Date.now() - typingSent < TYPING_MS) return
  typingSent = Date.now()
  // Ephemeral: no offset, not stored, lost when offline, which is what a typing indicator is worth.
  view.room.publish({ typing: true }, { ephemeral: true }).catch(() => {})
})

$('more-members').addEventListener('click', async () => {
  const view = views.get(current)
  // No room shown (the last one was left): nothing to load.
  if (view === undefined) return
  try {
    await view.room.loadMoreMembers()
  } catch (err) {
    setError('room-error', err.message)
  }
  if (views.get(current) === view) showMembers()
})

$('send').addEventListener('submit', async (event) => {
  event.preventDefault()
  const text = $('text').value.trim()
  const view = views.get(current)
  if (text === '' || view === undefined) return
  typingSent = 0
  setError('room-error', '')
  // Handed to the SDK, which sends it once (holding it while reconnecting): the box is cleared at once, so that
  // pressing Send again cannot send it twice, and is free for the next message meanwhile.
  $('text').value = ''
  sending++
  showSending()
  try {
    await view.room.publish({ text })
  } catch (err) {
    // Back in the box to fix or send again, unless something else was typed there meanwhile, or another room is shown.
    if ($('text').value === '' && view.room.name === current) {
      $('text').value = text
      setError('room-error', `Not sent: ${err.message}`)
    } else {
      setError('room-error', `Not sent to # ${view.room.name} ("${text.length > 40 ? `${text.slice(0, 40)}...` : text}"): ${err.message}`)
      // The error line goes with the next Send or reconnect: the whole text stays in its room's log, to copy.
      addEvent(view, `Not sent: "${text}" (${err.message})`, 'bad')
    }
  } finally {
    sending--
    showSending()
  }
})

/** Publishes handed to the SDK and not yet answered. */
let sending = 0

// The SDK holds them in this page only: a reload or a closed tab would drop them without a word, so the browser asks first.
window.addEventListener('beforeunload', (event) => {
  if (sending === 0) return
  event.preventDefault()
  // What browsers before 2023 (and Safari) look for.
  event.returnValue = ''
})

/** Publishes that wait for the connection are said so under the box. */
function showSending () {
  const waiting = sending > 0 && client.state !== 'open'
  $('sending').textContent = waiting ? `${sending} ${sending === 1 ? 'message waits' : 'messages wait'} for the connection, to be sent once it is back.` : ''
}

for (const [button, pane] of [['toggle-rooms', 'rooms-pane'], ['toggle-members', 'members-pane']]) {
  $(button).addEventListener('click', () => togglePane(pane, !$(pane).classList.contains('open')))
}
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape') closePanes()
})

function togglePane (pane, open) {
  closePanes()
  if (!open) return
  $(pane).classList.add('open')
  $(pane === 'rooms-pane' ? 'toggle-rooms' : 'toggle-members').setAttribute('aria-expanded', 'true')
  $(pane).querySelector('button, input')?.focus()
}

function closePanes () {
  for (const pane of ['rooms-pane', 'members-pane']) $(pane).classList.remove('open')
  for (const button of ['toggle-rooms', 'toggle-members']) $(button).setAttribute('aria-expanded', 'false')
}

/** Join a room (first visit: with its recent history) and show it. Resolves false when refused. */
async function enter (name) {
  closePanes()
  if (views.has(name)) {
    show(name)
    return true
  }
  setError('room-error', '')
  let room
  try {
    room = await client.join(name, { history: HISTORY })
  } catch (err) {
    setError('room-error', err.message)
    return false
  }
  if (views.has(name)) {
    show(name)
    return true
  }
  const view = { room, nodes: [], unread: 0, seen: 0, offs: [] }
  views.set(name, view)
  view.offs = [
    room.on('message', (message) => {
      if (name === current) stopTyping(message.from?.id)
      addMessage(view, message)
    }),
    room.on('ephemeral', (message) => {
      if (name === current && message.data?.typing === true && message.from !== undefined && message.from.id !== client.user?.id) startTyping(message.from)
    }),
    room.on('presence', ({ joins, leaves }) => {
      const parts = []
      if (joins.length > 0) parts.push(`${names(view, joins)} joined`)
      if (leaves.length > 0) parts.push(`${names(view, leaves)} left`)
      if (name === current) for (const member of leaves) stopTyping(member.id)
      // One line per diff, however many it batches.
      if (parts.length > 0) addEvent(view, parts.join('; '))
      if (name === current) showMembers()
    }),
    room.on('count', () => { if (name === current) showMembers() }),
    room.on('joined', ({ recovered }) => {
      if (recovered === true) addEvent(view, 'reconnected, nothing missed')
      if (name === current) showMembers()
    }),
    room.on('gap', (gap) => {
      const lost = gap.before === null ? `after #${gap.after}` : `#${gap.after + 1} to #${gap.before - 1}`
      addEvent(view, `reconnected: some messages could not be recovered (${lost})`, 'bad')
      recovery.gaps.add(name)
    }),
    room.on('left', ({ cause, reason }) => {
      if (cause === 'leave') return
      dropView(name)
      setError('room-error', `You left # ${name}: ${reason ?? 'removed by the server'}`)
      if (name === current) {
        const next = [...views.keys()][0]
        if (next !== undefined) show(next)
        else clearRoom()
      }
      showRooms()
    })
  ]
  show(name)
  return true
}

function dropView (name) {
  const view = views.get(name)
  if (view === undefined) return
  for (const off of view.offs) off()
  views.delete(name)
}

/** Show a joined room: its log, with a divider above what arrived since it was last shown. */
function show (name) {
  const previous = views.get(current)
  // Lines, not counting the divider: show() takes it out before it places the next one at `seen`.
  if (previous !== undefined && current !== name) previous.seen = previous.nodes.filter((node) => !node.classList.contains('divider')).length
  const view = views.get(name)
  current = name
  for (const node of view.nodes) if (node.classList.contains('divider')) node.remove()
  view.nodes = view.nodes.filter((node) => !node.classList.contains('divider'))
  if (view.unread > 0 && view.seen < view.nodes.length) {
    const divider = document.createElement('li')
    divider.className = 'divider'
    divider.textContent = 'new messages'
    view.nodes.splice(view.seen, 0, divider)
  }
  view.unread = 0
  $('messages').replaceChildren(...view.nodes)
  const divider = $('messages').querySelector('.divider')
  if (divider !== null) divider.scrollIntoView({ block: 'center' })
  else $('messages').scrollTop = $('messages').scrollHeight
  for (const { timer } of typing.values()) clearTimeout(timer)
  typing.clear()
  showTyping()
  $('room-title').textContent = `# ${name}`
  $('leave-room').hidden = false
  $('text').disabled = false
  $('send').querySelector('button').disabled = false
  $('text').focus()
  showMembers()
  showRooms()
}

function clearRoom () {
  current = undefined
  $('messages').replaceChildren()
  $('room-title').textContent = 'No room yet'
  $('leave-room').hidden = true
  $('text').disabled = true
  $('send').querySelector('button').disabled = true
  $('members').replaceChildren()
  $('count').textContent = ''
  $('more-members').hidden = true
}

/** A member's name, with a short id when another member of the room has the same name. */
function label (view, member) {
  if (member === undefined) return 'server'
  const twin = view.room.members.some((other) => other.id !== member.id && other.name === member.name)
  return twin ? `${member.name} #${member.id.slice(-4)}` : member.name
}

function names (view, members) {
  const shown = members.slice(0, 3).map((m) => label(view, m))
  if (members.length > 3) shown.push(`${members.length - 3} more`)
  return shown.length === 1 ? shown[0] : `${shown.slice(0, -1).join(', ')} and ${shown[shown.length - 1]}`
}

function addMessage (view, message) {
  const li = document.createElement('li')
  if (message.from?.id === client.user?.id) li.className = 'me'
  const who = document.createElement('span')
  who.className = 'who'
  who.textContent = label(view, message.from)
  const text = document.createElement('span')
  text.className = 'text'
  text.textContent = typeof message.data?.text === 'string' ? message.data.text : JSON.stringify(message.data)
  const time = document.createElement('time')
  time.dateTime = new Date(message.ts).toISOString()
  time.textContent = new Date(message.ts).toLocaleTimeString()
  li.append(who, text, time)
  append(view, li, true)
}

function addEvent (view, text, kind) {
  const li = document.createElement('li')
  li.className = kind === undefined ? 'event' : `event ${kind}`
  li.textContent = text
  append(view, li, false)
}

function append (view, li, unread) {
  view.nodes.push(li)
  // A tab left open for days in a busy room keeps the newest lines only.
  if (view.nodes.length > MAX_LINES) {
    const oldest = view.nodes.shift()
    oldest.remove()
    if (!oldest.classList.contains('divider') && view.seen > 0) view.seen--
  }
  if (view.room.name !== current) {
    if (unread) {
      view.unread++
      showRooms()
    }
    return
  }
  const list = $('messages')
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40
  list.append(li)
  if (atBottom) list.scrollTop = list.scrollHeight
}

function showMembers () {
  const view = views.get(current)
  if (view === undefined) return
  const items = view.room.members.map((member) => {
    const li = document.createElement('li')
    li.textContent = label(view, member) + (member.id === client.user?.id ? ' (you)' : '')
    return li
  })
  $('members').replaceChildren(...items)
  $('count').textContent = `(${view.room.count})`
  // A large room arrives a page at a time; the count is always the whole room's.
  $('more-members').hidden = view.room.membersComplete
}

/** The server's room list with live counts, plus the rooms this page is in, with unread badges. */
function showRooms () {
  const counts = new Map(roomList?.rooms ?? [])
  for (const [name, view] of views) if (!counts.has(name)) counts.set(name, view.room.count)
  const focused = document.activeElement?.closest?.('#rooms li')?.dataset.room
  const items = [...counts].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([name, count]) => {
    const view = views.get(name)
    const li = document.createElement('li')
    li.dataset.room = name
    li.classList.toggle('current', name === current)
    li.classList.toggle('joined', view !== undefined)
    const button = document.createElement('button')
    button.type = 'button'
    if (name === current) button.setAttribute('aria-current', 'true')
    const title = document.createElement('span')
    title.className = 'name'
    title.textContent = `# ${name}`
    const n = document.createElement('span')
    n.className = 'n'
    n.textContent = String(count)
    n.setAttribute('aria-label', `${count} ${count === 1 ? 'member' : 'members'}`)
    button.append(title)
    if (view !== undefined && view.unread > 0) {
      const badge = document.createElement('span')
      badge.className = 'badge'
      badge.textContent = String(view.unread)
      badge.setAttribute('aria-label', `${view.unread} unread`)
      button.append(badge)
    }
    button.append(n)
    button.addEventListener('click', () => { enter(name) })
    li.append(button)
    return li
  })
  $('rooms').replaceChildren(...items)
  if (focused !== undefined) $('rooms').querySelector(`li[data-room="${CSS.escape(focused)}"] button`)?.focus()
  const unread = [...views.values()].reduce((sum, view) => sum + view.unread, 0)
  $('toggle-rooms').textContent = unread > 0 ? `Rooms (${unread})` : 'Rooms'
}

function startTyping (member) {
  const view = views.get(current)
  clearTimeout(typing.get(member.id)?.timer)
  typing.set(member.id, { name: label(view, member), timer: setTimeout(() => stopTyping(member.id), TYPING_MS + 1500) })
  showTyping()
}

function stopTyping (id) {
  const entry = typing.get(id)
  if (entry === undefined) return
  clearTimeout(entry.timer)
  typing.delete(id)
  showTyping()
}

function showTyping () {
  const names = [...typing.values()].map((t) => t.name)
  $('typing').textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing...`
}

/** What the rejoins after a reconnect reported: rooms with a gap. */
const recovery = { gaps: new Set(), after: false }

function onState (state, change) {
  showState(state)
  showSending()
  clearInterval(countdown)
  if (state === 'reconnecting') {
    recovery.after = true
    recovery.gaps.clear()
    const due = Date.now() + change.delayMs
    const why = change.reason === '' ? `close code ${change.code}` : change.reason
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000))
      banner('warn', `Connection lost (${why}). Reconnecting${seconds > 0 ? ` in ${seconds} s` : ' now'}, attempt ${change.attempt}...`)
    }
    tick()
    countdown = setInterval(tick, 250)
  } else if (state === 'open' && recovery.after) {
    recovery.after = false
    // Stale errors of the old connection go; the rejoins' answers say what was missed.
    setError('room-error', '')
    // Every room's rejoin went out before 'open': wait for each answer (or refusal).
    const answered = (room) => new Promise((resolve) => {
      const offs = [room.on('joined', done), room.on('left', done)]
      function done () { for (const off of offs) off(); resolve() }
    })
    Promise.all([...views.values()].map((view) => answered(view.room))).then(() => {
      const lost = [...recovery.gaps]
      if (lost.length === 0) banner('ok', 'Reconnected, nothing missed.')
      else banner('bad', `Reconnected: some messages could not be recovered in ${lost.map((r) => `# ${r}`).join(', ')}.`)
    })
  } else if (state === 'closed') {
    banner('bad', `Disconnected: ${change.reason === '' ? `close code ${change.code}` : change.reason}. Reload the page to connect again.`)
  }
}

function banner (kind, text) {
  $('banner').dataset.kind = kind
  $('banner').textContent = text
  $('banner').hidden = false
}

function setError (id, text) {
  $(id).textContent = text
}

function showState (state) {
  $('state').dataset.state = state
  $('state').textContent = state
}
