// The demo chat page. Everything it knows of the protocol comes from the SDK.
import { connect } from './client/index.js'

const $ = (id) => document.getElementById(id)
const config = await (await fetch('config.json')).json()
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${config.path}`

let client
let room
let roomOff = []
/** Who is typing in the current room: member id -> { name, timer }. */
const typing = new Map()
/** When this page last told the room it is typing: at most once per TYPING_MS. */
let typingSent = 0
const TYPING_MS = 3000

$('nickname').value = localStorage.getItem('nickname') ?? ''

$('login').addEventListener('submit', async (event) => {
  event.preventDefault()
  const name = $('nickname').value.trim()
  $('login-error').textContent = ''
  try {
    client = await connect(wsUrl, { name })
  } catch (err) {
    $('login-error').textContent = `Could not connect: ${err.message}`
    return
  }
  localStorage.setItem('nickname', name)
  showState(client.state)
  client.on('state', showState)
  client.on('error', (err) => { $('room-error').textContent = err.message })
  $('login').hidden = true
  $('chat').hidden = false
  refreshRooms()
  setInterval(refreshRooms, 3000)
  await enter(new URLSearchParams(location.search).get('room') ?? 'lobby')
})

$('new-room').addEventListener('submit', async (event) => {
  event.preventDefault()
  await enter($('room-name').value.trim())
  $('room-name').value = ''
})

// Typing indicators are ephemeral: no offset, not stored, lost when offline, which is what they are worth.
$('text').addEventListener('input', () => {
  if (room === undefined || $('text').value === '' || Date.now() - typingSent < TYPING_MS) return
  typingSent = Date.now()
  room.publish({ typing: true }, { ephemeral: true }).catch(() => {})
})

$('more-members').addEventListener('click', async () => {
  const current = room
  try {
    await current.loadMoreMembers()
  } catch (err) {
    $('room-error').textContent = err.message
  }
  if (room === current) showMembers()
})

$('send').addEventListener('submit', async (event) => {
  event.preventDefault()
  const text = $('text').value.trim()
  if (text === '' || room === undefined) return
  $('text').value = ''
  typingSent = 0
  try {
    await room.publish({ text })
    $('room-error').textContent = ''
  } catch (err) {
    $('room-error').textContent = err.message
  }
})

async function enter (name) {
  if (room?.name === name) return
  $('room-error').textContent = ''
  let next
  try {
    next = await client.join(name)
  } catch (err) {
    $('room-error').textContent = err.message
    return
  }
  const previous = room
  room = next
  for (const off of roomOff) off()
  if (previous !== undefined) previous.leave().catch(() => {})
  $('messages').replaceChildren()
  for (const { timer } of typing.values()) clearTimeout(timer)
  typing.clear()
  showTyping()
  $('room-title').textContent = `# ${name}`
  $('text').disabled = false
  $('send').querySelector('button').disabled = false
  $('text').focus()
  roomOff = [
    room.on('message', (message) => {
      stopTyping(message.from?.id)
      addMessage(message)
    }),
    room.on('ephemeral', (message) => {
      if (message.data?.typing === true && message.from !== undefined && message.from.id !== client.user?.id) startTyping(message.from)
    }),
    room.on('presence', ({ joins, leaves }) => {
      for (const member of joins) addEvent(`${member.name} joined`)
      for (const member of leaves) {
        stopTyping(member.id)
        addEvent(`${member.name} left`)
      }
      showMembers()
    }),
    room.on('count', () => showMembers()),
    room.on('joined', ({ recovered }) => {
      if (recovered === true) addEvent('reconnected: nothing missed')
      showMembers()
    }),
    room.on('gap', () => addEvent('reconnected: some messages could not be recovered'))
  ]
  showMembers()
  refreshRooms()
}

function addMessage (message) {
  const li = document.createElement('li')
  const mine = message.from?.id === client.user?.id
  if (mine) li.className = 'me'
  const who = document.createElement('span')
  who.className = 'who'
  who.textContent = message.from?.name ?? 'server'
  const text = document.createElement('span')
  text.className = 'text'
  text.textContent = typeof message.data?.text === 'string' ? message.data.text : JSON.stringify(message.data)
  const time = document.createElement('time')
  time.textContent = new Date(message.ts).toLocaleTimeString()
  li.append(who, text, time)
  append(li)
}

function addEvent (text) {
  const li = document.createElement('li')
  li.className = 'event'
  li.textContent = text
  append(li)
}

function append (li) {
  const list = $('messages')
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40
  list.append(li)
  if (atBottom) list.scrollTop = list.scrollHeight
}

function showMembers () {
  const items = room.members.map((member) => {
    const li = document.createElement('li')
    li.textContent = member.name + (member.id === client.user?.id ? ' (you)' : '')
    return li
  })
  $('members').replaceChildren(...items)
  $('count').textContent = `(${room.count})`
  // A large room arrives a page at a time; the count is always the whole room's.
  $('more-members').hidden = room.membersComplete
}

function startTyping (member) {
  clearTimeout(typing.get(member.id)?.timer)
  typing.set(member.id, { name: member.name, timer: setTimeout(() => stopTyping(member.id), TYPING_MS + 1000) })
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

async function refreshRooms () {
  if (config.prefix === false) return
  let page
  try {
    const res = await fetch(`${config.prefix}?limit=100`)
    // While the server restarts the list is unavailable; keep the last one shown.
    if (!res.ok) return
    page = await res.json()
  } catch {
    return
  }
  const items = page.rooms.map(({ name, count }) => {
    const li = document.createElement('li')
    li.dataset.room = name
    if (name === room?.name) li.className = 'current'
    const label = document.createElement('span')
    label.textContent = `# ${name}`
    const n = document.createElement('span')
    n.className = 'n'
    n.textContent = String(count)
    li.append(label, n)
    li.addEventListener('click', () => enter(name))
    return li
  })
  $('rooms').replaceChildren(...items)
}

function showState (state) {
  $('state').dataset.state = state
  $('state').textContent = state
}
