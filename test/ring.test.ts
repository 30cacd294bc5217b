import t from 'tap'
import { Ring } from '../src/ring.js'
import { seeded } from './helpers/random.js'

t.test('a ring behaves as an array used as a queue, across growth and wrap-around', async (t) => {
  const rand = seeded(11)
  const ring = new Ring<number>()
  const model: number[] = []
  let next = 0
  let longest = 0
  const wrong: string[] = []
  for (let step = 0; step < 20_000 && wrong.length === 0; step++) {
    const roll = rand()
    if (roll < 0.55) {
      ring.push(next)
      model.push(next++)
    } else if (roll < 0.95) {
      const got = ring.shift()
      const want = model.shift()
      if (got !== want) wrong.push(`step ${step}: shift gave ${got}, expected ${want}`)
    } else if (roll < 0.951) {
      ring.clear()
      model.length = 0
    } else {
      const start = Math.floor(rand() * (model.length + 4)) - 2
      const end = Math.floor(rand() * (model.length + 4)) - 2
      const got = JSON.stringify([ring.slice(start, end), ring.slice(start)])
      const want = JSON.stringify([model.slice(Math.max(0, start), Math.max(0, end)), model.slice(Math.max(0, start))])
      if (got !== want) wrong.push(`step ${step}: slice(${start}, ${end}) gave ${got}, expected ${want}`)
    }
    if (ring.length !== model.length) wrong.push(`step ${step}: length ${ring.length}, expected ${model.length}`)
    longest = Math.max(longest, model.length)
  }
  t.same(wrong, [])
  t.ok(longest > 100 && model.length > 0, `grew to ${longest} items, wrapped, and ends with ${model.length}`)
  for (let i = -1; i <= model.length; i++) t.equal(ring.at(i), model[i], `at(${i})`)
})

t.test('an empty ring: shift and at answer undefined, slice an empty array', async (t) => {
  const ring = new Ring<string>()
  t.equal(ring.length, 0)
  t.equal(ring.shift(), undefined)
  t.equal(ring.at(0), undefined)
  t.same(ring.slice(0, 10), [])
  ring.push('a')
  t.equal(ring.shift(), 'a')
  t.equal(ring.shift(), undefined)
  t.equal(ring.length, 0)
})
